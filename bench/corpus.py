"""The load corpus: seeded, reproducible beacon requests from simulated viewing sessions.

Each session is one viewer on one page: impression -> play request -> play -> a View every 10 s ->
25/50/75/100 % with realistic drop-off, with pauses, seeks, shares, fullscreen, captions, buffering
and errors at realistic rates. Partners and entries are Zipf-popular. A session is sent by one of
three clients: the document's GET form (`/api_v3/index.php` or `/collect`), the current player's
POST + JSON body, or `navigator.sendBeacon` (POST, the query string as a text/plain body).
About 1.5 % of requests are invalid in the ways real clients get it wrong (JavaScript `undefined`
and `NaN` in numbers, an empty entryId before the media loaded, a truncated JSON body, ...).

    python bench/corpus.py --requests 20000 --seed 1 --out corpus.tsv

writes one request per line for bench/corpus.lua:
`valid<TAB>method<TAB>target<TAB>content-type<TAB>user-agent<TAB>body` (valid is 1 or 0).
No other module of ingestd is imported: the corpus says what a client meant, independently of
the validator it is used to measure.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import random
import uuid
from dataclasses import dataclass
from urllib.parse import quote

INVALID_SHARE = 0.015  # share of beacons mutated into one of INVALID_KINDS

USER_AGENTS = (  # (weight, user agent): desktop Chrome dominates, then mobile Safari, Android, TVs
    (30, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/131.0.0.0 Safari/537.36"),
    (12, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/131.0.0.0 Safari/537.36"),
    (14, "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
         "Version/18.1 Mobile/15E148 Safari/604.1"),
    (10, "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/131.0.0.0 Mobile Safari/537.36"),
    (6, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Safari/605.1.15"),
    (6, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"),
    (5, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"),
    (4, "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.7 Mobile/15E148 Safari/604.1"),
    (3, "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36"),
    (2, "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.79 "
        "Safari/537.36 WebAppManager"),
    (2, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"),
    (1, "Mozilla/5.0 (Windows NT 6.1; Trident/7.0; rv:11.0) like Gecko"),  # IE 11 still shows up
    (1, "Mozilla/5.0 (Linux; Android 9; AFTMM) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/118.0.5993.144 Mobile Safari/537.36"),  # Fire TV
)

SITES = ("www.abc.go.com", "news.example.com", "learn.university.edu", "sports.example.net", "www.example.org",
         "video.publisher.co.uk", "tv.example.de", "blog.example.io", "intranet.corp.example", "m.example.com")
PATH_WORDS = ("shows", "video", "watch", "news", "sport", "episode", "clip", "lecture", "live", "the-bachelorette",
              "most-recent", "highlights", "2024", "week-12", "interview", "trailer", "course", "module-3")
CONTEXTS = ("sports", "news", "entertainment", "education", "123456", "98765", "")
SOCIAL = ("facebook", "twitter", "linkedin", "email", "whatsapp", "reddit")
REPORT_TYPES = ("sexualContent", "violentRepulsive", "harmfulDangerous", "spamCommercials")
LANGS = ("en", "es", "fr", "de", "he", "pt", "ja")
NET_TYPES = ("4g", "wifi", "3g", "ethernet", "")
ERROR_CODES = ("7000", "3016", "1002", "7003", "4001")

EVENT_NAMES = {
    1: "impression", 2: "play request", 3: "play", 4: "resume", 11: "25%", 12: "50%", 13: "75%", 14: "100%",
    15: "90%", 21: "share clicked", 22: "shared", 23: "download", 24: "report clicked", 25: "report submitted",
    31: "enter fullscreen", 32: "exit fullscreen", 33: "pause", 34: "replay", 35: "seek", 36: "related clicked",
    37: "related selected", 38: "captions", 39: "source selected", 40: "info", 41: "speed", 42: "audio selected",
    43: "flavor switch", 45: "buffer start", 46: "buffer end", 98: "error", 99: "view",
    10002: "button clicked", 10003: "page load",
}
PLAYBACK_TYPES = {3, 4, 99}  # types that carry bufferTime/actualBitrate/preferredBitrate


@dataclass(frozen=True)
class Request:
    """One HTTP request of the corpus and whether a correct server must accept it (200) or not (400)."""

    method: str
    target: str
    content_type: str
    user_agent: str
    body: str
    valid: bool
    event_type: int | None = None
    invalid_kind: str = ""

    def line(self) -> str:
        return "\t".join((
            "1" if self.valid else "0", self.method, self.target, self.content_type, self.user_agent, self.body
        ))


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (k ** s) for k in range(1, n + 1)]


class World:
    """Partners, their players and entries, drawn once from the seed."""

    def __init__(self, rng: random.Random, partners: int = 300):
        self.rng = rng
        self.partner_ids = [rng.randrange(100_000, 4_000_000) for _ in range(partners)]
        self.partner_weights = _zipf_weights(partners, 1.1)
        self.entries: dict[int, list[str]] = {}
        self.entry_weights: dict[int, list[float]] = {}
        self.ui_confs: dict[int, list[int]] = {}
        for rank, pid in enumerate(self.partner_ids, start=1):
            n = max(5, int(3000 / rank ** 0.7))
            self.entries[pid] = [self._entry_id() for _ in range(n)]
            self.entry_weights[pid] = _zipf_weights(n, 1.0)
            self.ui_confs[pid] = [rng.randrange(20_000_000, 50_000_000) for _ in range(rng.randint(1, 3))]
        self.ua_weights = [w for w, _ in USER_AGENTS]
        self.user_agents = [ua for _, ua in USER_AGENTS]

    def _entry_id(self) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return f"{self.rng.choice('01')}_" + "".join(self.rng.choice(alphabet) for _ in range(8))

    def partner(self) -> int:
        return self.rng.choices(self.partner_ids, self.partner_weights)[0]

    def entry(self, pid: int) -> str:
        return self.rng.choices(self.entries[pid], self.entry_weights[pid])[0]


def _referrer_page(rng: random.Random) -> str:
    path = "/".join(rng.choice(PATH_WORDS) for _ in range(rng.randint(1, 4)))
    url = f"{rng.choice(('https', 'https', 'https', 'http'))}://{rng.choice(SITES)}/{path}"
    roll = rng.random()
    if roll < 0.3:
        url += f"/VDKA0_{rng.getrandbits(40):x}"
    elif roll < 0.45:
        url += f"?utm_source={rng.choice(SOCIAL)}&utm_campaign=fall+launch&id={rng.randrange(10**6)}"
    elif roll < 0.5:
        url += "/caf\u00e9-d\u00e9couverte"  # non-ASCII path: sent as UTF-8 percent escapes
    return url


def _ks_v1(rng: random.Random, pid: int, user: str) -> str:
    expiry = 1_700_000_000 + rng.randrange(10**8)
    payload = f"{pid};{pid};{expiry};0;{expiry - 86400}.{rng.randrange(10**4)};{user};view:*,widget:1;;"
    signature = hashlib.sha1(payload.encode()).hexdigest()
    return base64.b64encode(f"{signature}|{payload}".encode()).decode()


def _ks_v2(rng: random.Random, pid: int) -> str:
    blob = bytes(rng.getrandbits(8) for _ in range(96))
    return base64.urlsafe_b64encode(b"v2|%d|" % pid + blob).decode().rstrip("=")


class Session:
    """One viewer on one page: its fixed parameters and the clock of its beacons."""

    def __init__(self, world: World, rng: random.Random, start: float):
        self.rng = rng
        self.start = start
        self.partner_id = world.partner()
        self.entry_id = world.entry(self.partner_id)
        self.ui_conf_id = rng.choice(world.ui_confs[self.partner_id])
        self.user_agent = rng.choices(world.user_agents, world.ua_weights)[0]
        self.client = rng.choices(("get", "collect", "json", "beacon"), (38, 8, 49, 5))[0]
        self.session_id = str(uuid.UUID(int=rng.getrandbits(128)))
        if self.client in ("get", "collect"):
            self.session_id = self.session_id.upper()  # the legacy player's format, as in the document
        self.index = 0
        self.duration = max(15.0, rng.lognormvariate(math.log(240), 1.1))  # content length, seconds
        self.live = rng.random() < 0.08
        self.flavour_id = f"0_{rng.getrandbits(32):08x}"
        self.bitrate = rng.choice((480, 800, 1200, 2500, 4500, 8000))
        page = _referrer_page(rng)
        style = rng.random()
        if self.client == "json":
            self.referrer = base64.b64encode(page.encode()).decode()  # KAVA sends btoa(referrer)
        # the value the player holds; encode_query escapes it once more, as encodeURIComponent does
        elif style < 0.55:
            self.referrer = page  # sent encoded once
        elif style < 0.70:
            self.referrer = page.replace(":", "%3A", 1)  # the document's example: the scheme's colon twice
        elif style < 0.85:
            self.referrer = quote(page, safe="")  # sent encoded twice
        else:
            self.referrer = base64.b64encode(page.encode()).decode()  # Base64, then escaped
        self.user = rng.choice(("", "", "", f"user{rng.randrange(10**6)}@example.com", f"{rng.randrange(10**8)}"))
        roll = rng.random()
        self.ks = (_ks_v1(rng, self.partner_id, self.user) if roll < 0.25 else
                   _ks_v2(rng, self.partner_id) if roll < 0.32 else "")
        self.context = rng.choice(CONTEXTS)
        self.custom = [rng.choice(("", "", "Finnance", "promo", "campaign-42", "A/B test \u00e9t\u00e9"))
                       for _ in range(3)]
        self.session_start_ms = int(start * 1000) + 1_764_000_000_000
        self.client_ver = "3.0:v3.9.2" if self.client in ("get", "collect") else rng.choice(("7.42.1", "7.43.0"))
        self.client_tag = ("kdp:v3.9.2" if self.client in ("get", "collect")
                           else f"html5:v{self.client_ver}")
        self.speed = 1.0

    # -- one beacon's parameters ---------------------------------------------------------------
    def params(self, event_type: int, position: float, extra: dict | None = None) -> dict:
        self.index += 1
        rng = self.rng
        p: dict = {"eventType": event_type, "partnerId": self.partner_id}
        if event_type not in (10002, 10003):
            p["entryId"] = self.entry_id
            p["flavourId"] = self.flavour_id
        p["sessionId"] = self.session_id
        p["eventIndex"] = self.index
        if self.ks:
            p["ks"] = self.ks
        p["referrer"] = self.referrer
        p["deliveryType"] = "hls" if self.live else rng.choice(("hls", "hls", "dash", "http"))
        p["playbackType"] = "live" if self.live else "vod"
        p["sessionStartTime"] = self.session_start_ms
        p["uiConfId"] = self.ui_conf_id
        p["clientVer"] = self.client_ver
        p["clientTag"] = self.client_tag
        p["position"] = round(position, 3) if self.client == "json" else int(position)
        if self.context:
            p["playbackContext"] = self.context
        for i, value in enumerate(self.custom, start=1):
            if value:
                p[f"customVar{i}"] = value
        if event_type in PLAYBACK_TYPES:
            p["bufferTime"] = round(rng.expovariate(4.0), 3)
            p["actualBitrate"] = self.bitrate
            p["preferredBitrate"] = -1 if rng.random() < 0.7 else self.bitrate
        if self.client == "json":  # KAVA's extra telemetry
            if self.user:
                p["userId"] = self.user
            p["persistentSessionId"] = self.session_id[::-1]
            p["soundMode"] = rng.choice((1, 2))
            p["tabMode"] = rng.choice((1, 2))
            p["networkConnectionType"] = rng.choice(NET_TYPES)
            p["applicationVer"] = "1.4.2"
            if event_type == 1:
                p["playerJSLoadTime"] = round(rng.uniform(0.1, 3.0), 3)
            if event_type in PLAYBACK_TYPES:
                p["playTimeSum"] = round(position, 1)
                p["bufferTimeSum"] = round(rng.uniform(0, 5), 3)
                p["averageBitrate"] = round(self.bitrate * rng.uniform(0.8, 1.0), 2)
                p["forwardBufferHealth"] = round(rng.uniform(0, 1), 3)
                p["targetBuffer"] = 30
                p["droppedFramesRatio"] = round(rng.uniform(0, 0.02), 4)
                p["segmentDownloadTime"] = round(rng.uniform(0.05, 2), 3)
                p["manifestDownloadTime"] = round(rng.uniform(0.01, 0.5), 3)
            if event_type == 3:
                p["joinTime"] = round(rng.uniform(0.2, 4), 3)
        if extra:
            p.update(extra)
        return p

    # -- the whole session -------------------------------------------------------------------------
    def events(self) -> list[tuple[float, int, dict]]:
        """(seconds since corpus start, event type, parameters) for every beacon of the session."""
        rng = self.rng
        out: list[tuple[float, int, dict]] = []
        t = self.start

        def emit(event_type: int, position: float, extra: dict | None = None, dt: float = 0.0):
            nonlocal t
            t += dt
            out.append((t, event_type, self.params(event_type, position, extra)))

        if self.client == "json" and rng.random() < 0.1:
            emit(10003, 0, {"pageName": "watch", "pageType": "view"})
        emit(1, 0, dt=0.0)
        if rng.random() > 0.7:  # most impressions never turn into a play
            return out
        emit(2, 0, dt=rng.uniform(1, 30))
        if rng.random() < 0.05:  # failed to start
            emit(98, 0, {"errorCode": rng.choice(ERROR_CODES)}, dt=rng.uniform(0.5, 5))
            return out
        emit(3, 0, dt=rng.uniform(0.2, 4))
        # drop-off: a third leave in the first quarter, a fifth watch to the end
        watched = self.duration * min(1.0, rng.choices((rng.uniform(0, 0.25), rng.uniform(0.25, 1.0), 1.0),
                                                       (33, 47, 20))[0])
        if self.live:
            watched = rng.uniform(30, 1200)
        position = 0.0
        quartiles = [(0.25, 11), (0.5, 12), (0.75, 13), (1.0, 14)]
        fullscreen = reached_90 = False
        next_view = 10.0
        while position < watched:
            step = min(10.0 - (position % 10.0), watched - position) or 10.0
            position += step
            t += step
            if position + 1e-9 >= next_view:
                emit(99, position)
                next_view += 10.0
            if not self.live:
                while quartiles and position >= quartiles[0][0] * self.duration - 1e-6:
                    emit(quartiles.pop(0)[1], position)
                if self.client == "json" and position >= 0.9 * self.duration and not reached_90:
                    reached_90 = True
                    emit(15, position)
            roll = rng.random()
            if roll < 0.020:
                emit(33, position)
                emit(4, position, dt=rng.uniform(2, 60))
            elif roll < 0.030:
                target = rng.uniform(0, self.duration)
                emit(35, position, {"targetPosition": round(target, 1)})
                position = min(target, watched)
            elif roll < 0.038:
                fullscreen = not fullscreen
                emit(31 if fullscreen else 32, position)
            elif roll < 0.042:
                emit(38, position, {"caption": rng.choice(LANGS)})
            elif roll < 0.045:
                self.speed = rng.choice((0.5, 1.25, 1.5, 2.0))
                emit(41, position, {"playbackSpeed": self.speed})
            elif roll < 0.050:
                emit(21, position)
                if rng.random() < 0.5:
                    emit(22, position, {"socialNetwork": rng.choice(SOCIAL)}, dt=rng.uniform(1, 8))
            elif roll < 0.056 and self.client == "json":
                emit(45, position)
                emit(46, position, dt=rng.uniform(0.2, 3))
            elif roll < 0.058 and self.client == "json":
                self.bitrate = rng.choice((480, 800, 1200, 2500, 4500))
                emit(43, position, {"actualBitrate": self.bitrate, "flavorParamsId": rng.randrange(1, 9)})
            elif roll < 0.060:
                emit(39, position)
            elif roll < 0.062:
                emit(40, position)
            elif roll < 0.063:
                emit(23, position)
            elif roll < 0.064:
                emit(24, position)
                if rng.random() < 0.5:
                    emit(25, position, {"reportType": rng.choice(REPORT_TYPES)}, dt=rng.uniform(2, 20))
            elif roll < 0.066 and self.client == "json":
                emit(42, position, {"language": rng.choice(LANGS)})
            elif roll < 0.067 and self.client == "json":
                emit(98, position, {"errorCode": rng.choice(ERROR_CODES), "errorPosition": int(position)})
            elif roll < 0.068 and self.client == "json":
                emit(10002, position, {"buttonName": "share", "buttonType": "click"})
        if not quartiles and rng.random() < 0.1:
            emit(34, position, dt=rng.uniform(1, 10))
        if rng.random() < 0.03:
            emit(36, position, dt=rng.uniform(1, 10))
            emit(37, position, dt=rng.uniform(0.5, 3))
        return out


# -- encodings -------------------------------------------------------------------------------------

def _form_value(value) -> str:
    return quote(str(value), safe="")


def encode_query(params: dict, legacy: bool) -> str:
    """The query string a player builds; the legacy player escapes '.', '-' and '_' as the document shows."""
    parts = []
    for name, value in params.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = _form_value(value)
        if legacy:
            text = text.replace(".", "%2E").replace("-", "%2D").replace("_", "%5F")
        parts.append(f"{name}={text}")
    return "&".join(parts)


def build_request(session: Session, event_type: int, params: dict, rng: random.Random) -> Request:
    """The HTTP request `session`'s client sends for one beacon, maybe mutated into an invalid one."""
    invalid_kind = ""
    if rng.random() < INVALID_SHARE:
        invalid_kind = rng.choices(INVALID_KINDS, INVALID_WEIGHTS)[0]
        while invalid_kind == "truncated_json" and session.client != "json":  # only JSON bodies get cut short
            invalid_kind = rng.choices(INVALID_KINDS, INVALID_WEIGHTS)[0]
        params = _mutate(params, invalid_kind, rng)
    service = "service=analytics&action=trackEvent"
    if invalid_kind == "other_service":
        service = "service=stats&action=collect"
    client = session.client
    if client == "json":
        body = json.dumps(params, ensure_ascii=False, separators=(",", ":"))
        if invalid_kind == "truncated_json":
            body = body[: rng.randrange(10, max(11, len(body) - 5))]
        return Request("POST", f"/api_v3/index.php?{service}", "application/json", session.user_agent, body,
                       not invalid_kind, event_type, invalid_kind)
    legacy = client != "beacon"
    query = encode_query(params, legacy)
    if legacy:  # kalsig: the MD5 of the query string, as the legacy player signs it
        query = f"kalsig={hashlib.md5(query.encode()).hexdigest()}&{query}"
    if client == "beacon":
        return Request("POST", f"/api_v3/index.php?{service}", "text/plain;charset=UTF-8", session.user_agent,
                       query, not invalid_kind, event_type, invalid_kind)
    path = "/collect?" if client == "collect" and invalid_kind != "other_service" else f"/api_v3/index.php?{service}&"
    return Request("GET", path + query, "", session.user_agent, "", not invalid_kind, event_type, invalid_kind)


# The ways real clients send beacons a validator must refuse, and how often each shows up.
INVALID_KINDS = ("undefined_number", "nan_number", "undefined_partner", "empty_entry", "missing_event_type",
                 "unknown_event_type", "truncated_json", "other_service")
INVALID_WEIGHTS = (30, 12, 12, 15, 6, 10, 8, 7)


def _mutate(params: dict, kind: str, rng: random.Random) -> dict:
    p = dict(params)
    if kind == "undefined_number":  # a JavaScript variable that was never set
        p[rng.choice(("position", "eventIndex", "uiConfId", "sessionStartTime"))] = "undefined"
    elif kind == "nan_number":
        p["position"] = "NaN"
    elif kind == "undefined_partner":
        p["partnerId"] = rng.choice(("undefined", "null", "{partnerId}"))
    elif kind == "empty_entry":  # the player fired before its media was set
        if p.get("eventType") in (10002, 10003):
            p["eventType"] = 1
        p["entryId"] = ""
    elif kind == "missing_event_type":
        p.pop("eventType", None)
    elif kind == "unknown_event_type":
        p["eventType"] = rng.choice((0, 5, 999, "undefined"))
    return p


def generate(requests: int, seed: int = 1) -> list[Request]:
    """`requests` beacon requests of interleaved sessions, in the order their clients would send them."""
    rng = random.Random(seed)
    world = World(rng)
    timed: list[tuple[float, int, Request]] = []
    n = 0
    # sessions start over a window sized so that about `requests` beacons fall inside it
    window = max(60.0, requests / 40.0)
    while n < requests * 1.5:
        session = Session(world, rng, rng.uniform(0, window))
        for t, event_type, params in session.events():
            timed.append((t, n, build_request(session, event_type, params, rng)))
            n += 1
    timed.sort(key=lambda item: (item[0], item[1]))
    return [request for _, _, request in timed[:requests]]


def summary(corpus: list[Request]) -> str:
    """A few lines describing the corpus: forms, event mix, invalid kinds."""
    from collections import Counter

    forms = Counter((r.method, r.target.split("?")[0], r.content_type.split(";")[0]) for r in corpus)
    kinds = Counter(r.invalid_kind for r in corpus if not r.valid)
    types = Counter(r.event_type for r in corpus if r.valid)
    invalid = sum(not r.valid for r in corpus)
    lines = [f"{len(corpus)} requests, {invalid} invalid ({100 * invalid / len(corpus):.2f} %), "
             f"mean request-target+body {sum(len(r.target) + len(r.body) for r in corpus) / len(corpus):.0f} bytes"]
    lines.append("forms: " + ", ".join(f"{m} {p} {c or '-'} {k}" for (m, p, c), k in forms.most_common()))
    lines.append("event types: " + ", ".join(f"{t}:{k}" for t, k in types.most_common()))
    lines.append("invalid kinds: " + ", ".join(f"{t}:{k}" for t, k in kinds.most_common()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="file to write, one request per line")
    args = parser.parse_args(argv)
    corpus = generate(args.requests, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for request in corpus:
            f.write(request.line() + "\n")
    print(summary(corpus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
