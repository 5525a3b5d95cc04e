"""The event registry against the upstream document's table, and the validation rules, without a server."""
from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from ingestd import events
from ingestd.events import REGISTRY, Rejection, body_params, form_decode, number_error, split_query, validate

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# The document's "Supported Events" table, transcribed cell by cell (Event, Event Type, Required
# Parameters, Optional Parameters). Its typos are kept where they do not change meaning; rows the
# document renders broken are noted: "Exit |fullscreen|" splits the name across a cell, and rows
# 40 (info) and 41 (speed) lack the '|' between Required and Optional (the required list ends at
# the last field before "ks", which starts every Optional cell).

DOC_OPTIONAL = ("ks, playbackContext, referrer, deliveryType, playbackType, kalsig, sessionStartTime, uiConfId, "
                "clientVer, clientTag, position, customVar1, customVar2, customVar3")
DOCUMENT_TABLE = [
    ("Player Impression", 1, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Play Requested", 2, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Play", 3, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, bufferTime, actualBitrate, "
                "preferredBitrate", DOC_OPTIONAL),
    ("Resume", 4, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, bufferTime, actualBitrate, "
                  "preferredBitrate", DOC_OPTIONAL),
    ("Play reached 25%", 11, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Play reached 50%", 12, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Play reached 75%", 13, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Play reached 100%", 14, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Share Clicked", 21, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Shared", 22, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, socialNetwork", DOC_OPTIONAL),
    ("Download clicked", 23, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Report clicked", 24, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Report submitted", 25, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, reportType",
     DOC_OPTIONAL),
    ("Enter fullscreen", 31, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Exit fullscreen", 32, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Pause clicked", 33, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Replay clicked", 34, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("Seek", 35, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, targetPosition", DOC_OPTIONAL),
    ("relatedClicked", 36, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("relatedSelected", 37, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("captions", 38, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, caption", DOC_OPTIONAL),
    ("sourceSelected", 39, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("info", 40, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex", DOC_OPTIONAL),
    ("speed", 41, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, playbackSpeed", DOC_OPTIONAL),
    ("View", 99, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, bufferTime, actualBitrate, "
                 "preferredBitrate", DOC_OPTIONAL),
]

# Beyond the document (issue 2): KAVA's event types and the application events.
KAVA_TYPES = [
    ("Play reached 90%", 15, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex"),
    ("Audio selected", 42, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, language"),
    ("Flavor switch", 43, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, actualBitrate"),
    ("Buffer start", 45, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex"),
    ("Buffer end", 46, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex"),
    ("Error", 98, "eventType, partnerId, entryId, flavourId, sessionId, eventIndex, errorCode"),
    ("Button clicked", 10002, "eventType, partnerId, sessionId, eventIndex, buttonName, buttonType"),
    ("Page load", 10003, "eventType, partnerId, sessionId, eventIndex, pageName, pageType"),
]

# Every parameter of the document with the column and type it must land in (types from the
# document's "Event Parameters Explanation": ids and sequence numbers are integers, times in
# seconds and bitrates are numbers, everything else is text; entryId and flavourId look like
# '0_n5nbuy6i', playbackContext is 'sports' in the document's own example).
DOCUMENT_FIELDS = {
    "eventType": ("event_type", "int"), "partnerId": ("partner_id", "int"), "entryId": ("entry_id", "str"),
    "flavourId": ("flavour_id", "str"), "sessionId": ("session_id", "str"), "eventIndex": ("event_index", "int"),
    "bufferTime": ("buffer_time", "float"), "actualBitrate": ("actual_bitrate", "float"),
    "preferredBitrate": ("preferred_bitrate", "float"), "referrer": ("referrer", "str"),
    "deliveryType": ("delivery_type", "str"), "playbackType": ("playback_type", "str"), "kalsig": ("kalsig", "str"),
    "sessionStartTime": ("session_start_time", "int"), "uiConfId": ("ui_conf_id", "int"),
    "clientVer": ("client_ver", "str"), "clientTag": ("client_tag", "str"), "position": ("position", "float"),
    "playbackContext": ("playback_context", "str"), "customVar1": ("custom_var1", "str"),
    "customVar2": ("custom_var2", "str"), "customVar3": ("custom_var3", "str"),
    "socialNetwork": ("social_network", "str"), "reportType": ("report_type", "str"),
    "targetPosition": ("target_position", "float"), "caption": ("caption", "str"),
    "playbackSpeed": ("playback_speed", "float"),
}
# The KAVA parameters issue 2 asks real columns for, and the application events' fields.
KAVA_FIELDS = {
    "userId": ("user_id", "str"), "applicationVer": ("application_ver", "str"), "playlistId": ("playlist_id", "str"),
    "bufferTimeSum": ("buffer_time_sum", "float"), "playTimeSum": ("play_time_sum", "float"),
    "averageBitrate": ("average_bitrate", "float"), "joinTime": ("join_time", "float"),
    "canPlay": ("can_play", "float"), "playerJSLoadTime": ("player_js_load_time", "float"),
    "audioLanguage": ("audio_language", "str"), "captionsLanguage": ("captions_language", "str"),
    "soundMode": ("sound_mode", "int"), "tabMode": ("tab_mode", "int"),
    "forwardBufferHealth": ("forward_buffer_health", "float"),
    "manifestDownloadTime": ("manifest_download_time", "float"),
    "segmentDownloadTime": ("segment_download_time", "float"), "bandwidth": ("bandwidth", "float"),
    "droppedFramesRatio": ("dropped_frames_ratio", "float"), "targetBuffer": ("target_buffer", "float"),
    "networkConnectionType": ("network_connection_type", "str"),
    "networkConnectionOverhead": ("network_connection_overhead", "float"),
    "flavorParamsId": ("flavor_params_id", "int"), "language": ("language", "str"),
    "errorCode": ("error_code", "str"), "errorDetails": ("error_details", "str"),
    "errorPosition": ("error_position", "int"), "playbackSpeed": ("playback_speed", "float"),
    "playerSkin": ("player_skin", "str"), "virtualEventId": ("virtual_event_id", "int"),
    "persistentSessionId": ("persistent_session_id", "str"), "application": ("application", "str"),
    "kalturaApplication": ("kaltura_application", "str"), "kalturaApplicationVer": ("kaltura_application_ver", "str"),
    "buttonName": ("button_name", "str"), "buttonType": ("button_type", "str"),
    "buttonValue": ("button_value", "str"), "buttonInfo": ("button_info", "str"),
    "pageName": ("page_name", "str"), "pageType": ("page_type", "str"), "pageLoadType": ("page_load_type", "str"),
}


def names(cell: str) -> set[str]:
    return {name.strip() for name in cell.split(",")}


# -- the registry against the document -------------------------------------------------------------

def test_registry_holds_the_documents_25_types_and_the_8_beyond_it():
    assert len(DOCUMENT_TABLE) == 25
    assert {t for _, t, _, _ in DOCUMENT_TABLE} == {t.id for t in REGISTRY.values() if t.in_document}
    assert set(REGISTRY) == {t for _, t, _, _ in DOCUMENT_TABLE} | {t for _, t, _ in KAVA_TYPES}
    assert len(REGISTRY) == 33


@pytest.mark.parametrize("name, type_id, required, optional", DOCUMENT_TABLE, ids=[str(r[1]) for r in DOCUMENT_TABLE])
def test_document_type_matches_the_table_field_by_field(name, type_id, required, optional):
    entry = REGISTRY[type_id]
    assert entry.name == name
    assert entry.in_document
    assert entry.required == names(required)
    for field in names(optional):  # every optional field is known and not required
        assert field in entry.optional, f"{type_id}: optional {field} missing"
        assert field not in entry.required
    assert isinstance(entry.required, frozenset) and isinstance(entry.optional, frozenset)
    assert entry.label == f"eventType {type_id} ({name})"


@pytest.mark.parametrize("name, type_id, required", KAVA_TYPES, ids=[str(r[1]) for r in KAVA_TYPES])
def test_kava_and_application_types(name, type_id, required):
    entry = REGISTRY[type_id]
    assert (entry.name, entry.in_document, entry.required) == (name, False, names(required))
    assert names(DOC_OPTIONAL) <= entry.optional
    if type_id >= 10000:  # application events are about a page, not an entry
        assert {"entryId", "flavourId"} <= entry.optional


def test_event_type_ids_fit_the_column():
    ddl = events_table_ddl()
    assert re.search(r"\bevent_type UInt16\b", ddl)  # 10003 needs more than 8 bits
    assert max(REGISTRY) < 2 ** 16


@pytest.mark.parametrize("field", sorted(DOCUMENT_FIELDS))
def test_document_field_column_and_type(field):
    assert events.FIELDS[field] == DOCUMENT_FIELDS[field]


@pytest.mark.parametrize("field", sorted(KAVA_FIELDS))
def test_kava_field_column_and_type(field):
    assert events.FIELDS[field] == KAVA_FIELDS[field]
    for type_id in REGISTRY:  # known to every type: it never lands in `extra`
        assert field in REGISTRY[type_id].required | REGISTRY[type_id].optional


def test_ks_has_no_raw_column():
    assert events.FIELDS["ks"][0] is None
    assert "ks" not in events.COLUMNS


def events_table_ddl() -> str:
    sql = (REPO / "schema" / "001_events.sql").read_text()
    return sql[sql.index("CREATE TABLE IF NOT EXISTS analytics.events\n"):sql.index("ENGINE = MergeTree")]


def events_view_sql() -> str:
    sql = (REPO / "schema" / "001_events.sql").read_text()
    return sql[sql.index("CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.events_mv"):
               sql.index("CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.rejected_events_mv")]


@pytest.mark.parametrize("field", sorted(events.COLUMNS))
def test_every_field_has_a_typed_column_decoded_the_same_way(field):
    """The column exists with the registry's type, and the view parses it as validation checks it."""
    column, kind = events.FIELDS[field]
    ddl, view = events_table_ddl(), events_view_sql()
    declared = re.search(rf"^\s+{column} (.+?),?$", ddl, re.MULTILINE)
    assert declared, f"no column {column}"
    expected_type = {"int": r"(Nullable\()?U?Int(16|64)\)?", "float": r"Nullable\(Float64\)",
                     "str": r"(LowCardinality\()?String\)?"}[kind]
    assert re.fullmatch(expected_type, declared.group(1)), declared.group(1)
    expected_expr = {"int": rf"to(U?Int(16|64))Or(Null|Zero)\((trimBoth\()?p\['{field}'\]\)?\)",
                     "float": rf"toFloat64OrNull\(p\['{field}'\]\)", "str": rf"p\['{field}'\]"}[kind]
    assert re.search(rf"{expected_expr} AS {column},?\n", view), f"{field} not decoded as {kind} into {column}"


def test_known_fields_are_excluded_from_extra():
    view = events_view_sql()
    excluded = re.search(r"NOT has\(\[(.*?)\], k\)", view).group(1)
    listed = {name.strip().strip("'") for name in excluded.split(",")}
    assert set(events.FIELDS) <= listed
    assert {"service", "action", "apiVersion", "format"} <= listed  # the API's own routing parameters


# -- validation ----------------------------------------------------------------------------------

PLAY = "eventType=3&partnerId=585231&entryId=0_abc&flavourId=0_f&sessionId=s&eventIndex=1&bufferTime=0.5" \
       "&actualBitrate=800&preferredBitrate=-1"


def check(query: str, body: dict | None = None, strict: bool = False):
    return validate(split_query(query.encode()), body_params(body) if body else None, strict)


def rejected(query: str, body: dict | None = None, strict: bool = False) -> Rejection:
    with pytest.raises(Rejection) as info:
        check(query, body, strict)
    assert info.value.reason in events.REASONS
    assert "\n" not in info.value.message
    return info.value


def test_complete_play_is_accepted_with_nothing_missing():
    result = check(PLAY)
    assert result.event_type.id == 3 and result.missing == []
    assert check(PLAY, strict=True).missing == []


@pytest.mark.parametrize("query, reason, message", [
    ("partnerId=1&entryId=e", "missing_event_type", "eventType is missing"),
    ("eventType=&partnerId=1&entryId=e", "missing_event_type", "eventType is missing"),
    ("eventType=7&partnerId=1&entryId=e", "unknown_event_type", "eventType '7' is not a known event type"),
    ("eventType=abc&partnerId=1&entryId=e", "unknown_event_type", "eventType 'abc' is not a known event type"),
    ("eventType=3.0&partnerId=1&entryId=e", "unknown_event_type", "eventType '3.0' is not a known event type"),
    ("eventType=3&entryId=e", "missing_partner_id", "eventType 3 (Play): partnerId is missing"),
    ("eventType=3&partnerId=&entryId=e", "missing_partner_id", "eventType 3 (Play): partnerId is missing"),
    ("eventType=3&partnerId=abc&entryId=e", "bad_partner_id", "eventType 3 (Play): partnerId 'abc' is not an integer"),
    ("eventType=3&partnerId=1.5&entryId=e", "bad_partner_id", "eventType 3 (Play): partnerId '1.5' is not an integer"),
    ("eventType=3&partnerId=99999999999999999999&entryId=e", "bad_partner_id",
     "eventType 3 (Play): partnerId '99999999999999999999' is out of the 64-bit integer range"),
    ("eventType=1&partnerId=1", "missing_entry_id", "eventType 1 (Player Impression): entryId is missing or empty"),
    ("eventType=1&partnerId=1&entryId=", "missing_entry_id",
     "eventType 1 (Player Impression): entryId is missing or empty"),
    ("eventType=3&partnerId=1&entryId=e&bufferTime=NaN", "bad_number",
     "eventType 3 (Play): bufferTime 'NaN' is not a number"),
    ("eventType=3&partnerId=1&entryId=e&bufferTime=inf", "bad_number",
     "eventType 3 (Play): bufferTime 'inf' is not a number"),
    ("eventType=3&partnerId=1&entryId=e&position=-Infinity", "bad_number",
     "eventType 3 (Play): position '-Infinity' is not a number"),
    ("eventType=3&partnerId=1&entryId=e&actualBitrate=1e400", "bad_number",
     "eventType 3 (Play): actualBitrate '1e400' is not a finite number"),
    ("eventType=3&partnerId=1&entryId=e&eventIndex=2.5", "bad_number",
     "eventType 3 (Play): eventIndex '2.5' is not an integer"),
    ("eventType=3&partnerId=1&entryId=e&eventIndex=9223372036854775808", "bad_number",
     "eventType 3 (Play): eventIndex '9223372036854775808' is out of the 64-bit integer range"),
    ("eventType=3&partnerId=1&entryId=e&uiConfId=0x10", "bad_number",
     "eventType 3 (Play): uiConfId '0x10' is not an integer"),
    ("eventType=3&partnerId=1&entryId=e&position=1_000", "bad_number",
     "eventType 3 (Play): position '1_000' is not a number"),
    ("eventType=3&partnerId=1&entryId=e&position=+5", "bad_number",  # '+' is a space
     "eventType 3 (Play): position ' 5' is not a number"),
    ("eventType=3&partnerId=1&entryId=e&position=1%2C5", "bad_number",
     "eventType 3 (Play): position '1,5' is not a number"),
    ("eventType=43&partnerId=1&entryId=e&flavorParamsId=hd", "bad_number",
     "eventType 43 (Flavor switch): flavorParamsId 'hd' is not an integer"),
    ("eventType=10003&partnerId=1&soundMode=loud", "bad_number",
     "eventType 10003 (Page load): soundMode 'loud' is not an integer"),
])
def test_rejection_reason_and_message(query, reason, message):
    rejection = rejected(query)
    assert (rejection.reason, rejection.message) == (reason, message)


def test_rejection_message_is_one_line_and_short():
    rejection = rejected("eventType=3&partnerId=1&entryId=e&position=1%0A2" + "9" * 200)
    assert rejection.message == "eventType 3 (Play): position '1\\n29999999999999999999999999999999999999…' is not a number"


@pytest.mark.parametrize("field, value", [
    ("actualBitrate", "-1"), ("position", "-12.5"), ("position", "-3600"), ("targetPosition", "-0.25"),
    ("bufferTime", "-.5"), ("eventIndex", "-1"), ("partnerId", "-5"), ("position", "1e3"), ("position", "1.E-3"),
    ("position", "%2B5"), ("position", "18%2E5"), ("uiConfId", "007"), ("eventIndex", "-9223372036854775808"),
    ("sessionStartTime", "1435075182567"), ("position", "123456789012345678901234567890"),
])
def test_valid_numbers_including_negative(field, value):
    query = f"eventType=3&partnerId=1&entryId=e&{field}={value}"
    assert check(query).event_type.id == 3


def test_empty_numeric_field_is_missing_not_bad():
    result = check("eventType=3&partnerId=1&entryId=e&bufferTime=&eventIndex=")
    assert "bufferTime" in result.missing and "eventIndex" in result.missing


def test_application_events_need_no_entry_id():
    assert check("eventType=10002&partnerId=1&sessionId=s&eventIndex=1&buttonName=b&buttonType=t",
                 strict=True).missing == []
    assert check("eventType=10003&partnerId=1").missing == ["eventIndex", "pageName", "pageType", "sessionId"]


def test_default_mode_records_missing_required_fields():
    # the document's own example has no flavourId
    result = check("eventType=2&partnerId=585231&entryId=0_n&sessionId=s&eventIndex=3")
    assert result.missing == ["flavourId"]
    # empty values are missing too (the Kaltura player sends sessionId= without a session)
    assert check("eventType=2&partnerId=1&entryId=e&sessionId=&eventIndex=3&flavourId=f").missing == ["sessionId"]
    assert check("eventType=3&partnerId=1&entryId=e").missing == [
        "actualBitrate", "bufferTime", "eventIndex", "flavourId", "preferredBitrate", "sessionId"]


def test_strict_mode_rejects_missing_required_fields():
    rejection = rejected("eventType=2&partnerId=585231&entryId=0_n&sessionId=s&eventIndex=3", strict=True)
    assert (rejection.reason, rejection.message) == ("missing_required", "eventType 2 (Play Requested): missing flavourId")
    rejection = rejected("eventType=35&partnerId=1&entryId=e&flavourId=f&sessionId=&eventIndex=1", strict=True)
    assert rejection.message == "eventType 35 (Seek): missing sessionId, targetPosition"
    # the always-rejected rules come first, in strict mode too
    assert rejected("eventType=2&partnerId=x&entryId=e", strict=True).reason == "bad_partner_id"


def test_empty_parameters_are_skipped():
    assert split_query(b"&&eventType=3&&partnerId=1&=orphan&flag&x=&") == {
        b"eventType": b"3", b"partnerId": b"1", b"flag": b"", b"x": b""}
    assert check("&&eventType=3&&partnerId=1&entryId=e&=x&").event_type.id == 3


def test_repeated_names_first_wins():
    assert split_query(b"a=1&a=2&b=&b=3") == {b"a": b"1", b"b": b""}
    assert check("eventType=3&eventType=abc&partnerId=1&partnerId=x&entryId=e").event_type.id == 3
    assert rejected("eventType=3&partnerId=x&partnerId=1&entryId=e").reason == "bad_partner_id"


def test_escaped_names_are_decoded():
    assert split_query(b"event%54ype=3&partner+Id=1") == {b"eventType": b"3", b"partner Id": b"1"}
    assert check("event%54ype=3&partner%49d=1&entry%49d=e").event_type.id == 3


def test_event_type_value_decoding():
    assert check("eventType=%33&partnerId=1&entryId=e").event_type.id == 3
    assert check("eventType=+3+&partnerId=1&entryId=e").event_type.id == 3  # spaces around it are trimmed
    assert check("eventType=10002&partnerId=1").event_type.id == 10002
    # leading zeros: the view reads the number (toUInt16OrZero('03') is 3), so validation does too
    assert check("eventType=03&partnerId=1&entryId=e").event_type.id == 3
    assert check("eventType=+0099&partnerId=1&entryId=e").event_type.id == 99
    assert check("eventType=010002&partnerId=1").event_type.id == 10002


@pytest.mark.parametrize("raw, decoded", [
    (b"a+b", b"a b"), (b"kdp%3Av3%2E9%2E2", b"kdp:v3.9.2"), (b"%2e%2E", b".."),
    (b"http%253A%2F%2Fabc", b"http%3A//abc"),  # double-encoded: decoded once, as sent
    (b"100%", b"100%"), (b"%zz%4", b"%zz%4"), (b"%", b"%"),  # bad escapes kept as sent
    (b"%%41", b"%%41"), (b"%zz%41", b"%zzA"), (b"%+1", b"%+1"), (b"a+%g+", b"a %g+"),  # as ClickHouse: '%' + 2 chars
    (b"%FF%C3", b"\xff\xc3"),  # not UTF-8: bytes kept (the view turns them into U+FFFD)
    (b"%2B", b"+"), (b"", b""), (b"plain", b"plain"),
])
def test_form_decode(raw, decoded):
    assert form_decode(raw) == decoded


def test_invalid_utf8_and_bad_escapes_do_not_break_validation():
    result = check("eventType=3&partnerId=1&entryId=%FF%FE&sessionId=%zz&referrer=%E2%82&x%FF=1")
    assert result.event_type.id == 3 and "sessionId" not in result.missing
    rejection = rejected("eventType=3&partnerId=%FF&entryId=e")
    assert rejection.message == "eventType 3 (Play): partnerId '\ufffd' is not an integer"


# -- POST bodies -----------------------------------------------------------------------------------

def test_body_params_turn_json_values_into_text():
    assert body_params({"position": 18.5, "eventIndex": 3, "canPlay": None, "flag": True, "off": False,
                        "referrer": "https://x/?a=b&c", "nested": {"a": [1]}, "": "nameless"}) == {
        b"position": b"18.5", b"eventIndex": b"3", b"canPlay": b"", b"flag": b"true", b"off": b"false",
        b"referrer": b"https://x/?a=b&c", b"nested": b'{"a":[1]}'}


def test_json_body_merges_with_the_query_string_which_wins():
    body = {"eventIndex": 4, "bufferTime": 0.25, "actualBitrate": -1, "preferredBitrate": 1200, "flavourId": "0_f",
            "partnerId": "not the one"}
    result = check("eventType=3&partnerId=585231&entryId=0_abc&sessionId=s", body, strict=True)
    assert result.event_type.id == 3 and result.missing == []


def test_json_body_numbers_are_checked_and_not_decoded_twice():
    base = "eventType=3&partnerId=1&entryId=e"
    assert rejected(base, {"position": "NaN"}).message == "eventType 3 (Play): position 'NaN' is not a number"
    assert rejected(base, {"position": "%31"}).message == "eventType 3 (Play): position '%31' is not a number"
    assert rejected(base, {"eventIndex": 2.5}).message == "eventType 3 (Play): eventIndex '2.5' is not an integer"
    assert rejected(base, {"eventIndex": [1]}).reason == "bad_number"
    # a JSON string keeps its '+' (no form decoding), and ClickHouse reads '+5' as 5
    assert check(base, {"position": "+5"}).event_type.id == 3
    # query values are decoded once when merged with a body: '%252E5' is '%2E5', not '.5'
    assert rejected(base + "&position=%252E5", {"x": "1"}).message == \
        "eventType 3 (Play): position '%2E5' is not a number"


def test_json_body_alone_can_carry_every_field():
    body = {"eventType": 10002, "partnerId": 5, "sessionId": "s", "eventIndex": 1, "buttonName": "b",
            "buttonType": "t"}
    assert check("", body, strict=True).event_type.id == 10002
    assert rejected("", {"partnerId": 5}).reason == "missing_event_type"


# -- numbers as ClickHouse reads them ----------------------------------------------------------------

@pytest.mark.parametrize("value, as_int, as_float", [
    ("5", True, True), ("-5", True, True), ("+5", True, True), ("05", True, True), ("1.5", False, True),
    ("1.", False, True), (".5", False, True), ("1e3", False, True), ("1e0003", False, True),
    ("1e400", False, False), ("nan", False, False), ("inf", False, False), (" 5", False, False),
    ("5 ", False, False), ("", False, False), ("-", False, False), ("0x10", False, False), ("1_000", False, False),
    ("9223372036854775807", True, True), ("9223372036854775808", False, True),
    ("-9223372036854775808", True, True), ("0" * 30 + "5", True, True), ("9" * 5000, False, False),
])
def test_number_error(value, as_int, as_float):
    assert (number_error(value.encode(), "int") is None) == as_int
    assert (number_error(value.encode(), "float") is None) == as_float


def test_describe_lists_every_type():
    lines = events.describe()
    assert len(lines) == 33 and lines[0].split()[0] == "1" and lines[-1].split()[0] == "10003"
    assert orjson.dumps(lines)  # plain text


@pytest.mark.parametrize("raw_type", [b"%093", b"3%0A", b"%0D3", b"3%0B", b"%0C3"])
def test_event_type_with_control_whitespace_is_unknown(raw_type):
    """The view trims spaces only (trimBoth): a tab or newline around the type would be stored as 0."""
    with pytest.raises(Rejection) as caught:
        validate(split_query(b"eventType=" + raw_type + b"&partnerId=5&entryId=e"), None, False)
    assert caught.value.reason == "unknown_event_type"
    with pytest.raises(Rejection):
        validate({}, {b"eventType": form_decode(raw_type), b"partnerId": b"5", b"entryId": b"e"}, False)


def test_event_type_with_spaces_is_trimmed_as_the_view_does():
    assert validate(split_query(b"eventType=+3%20&partnerId=5&entryId=e"), None, False).event_type.id == 3
