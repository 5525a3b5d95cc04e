"""The `ingestd` command: serve, migrate, query, report, replay, events."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import orjson

from . import __version__, config, logs

log = logging.getLogger("ingestd")

DEFAULT_DSN = config.Settings.clickhouse


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting; unset flags stay None so env and TOML can fill them."""
    for f in dataclasses.fields(config.Settings):
        flag = "--" + f.name.replace("_", "-")
        env = config.ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata['help']} (env {env}; default {f.default!r})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, nargs="?", const="true", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def _settings(args) -> config.Settings:
    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(config.Settings)}
    return config.load(flags)


def cmd_serve(args) -> int:
    settings = _settings(args)
    if args.print_config:
        sys.stdout.write(orjson.dumps(settings.redacted(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    logs.setup(settings.log_level)
    for name in config.unknown_environment():
        log.warning("environment variable %s matches no setting: ignored", name)
    from . import server

    if settings.workers > 1:
        from . import workers
        from .spool import SpoolError

        try:
            return workers.run(settings)
        except SpoolError as exc:  # a spool directory that cannot be used: one line, not a traceback
            log.error("%s", exc)
            return 1
    return server.serve(settings)


def cmd_migrate(args) -> int:
    logs.setup("info")
    from . import clickhouse

    dsn = args.clickhouse or config.load({}).clickhouse
    args.cluster = args.cluster or config.load({}).cluster  # a box configured for a cluster never migrates locally
    if args.cluster:
        from . import cluster

        try:
            if args.dry_run:
                sys.stdout.write(cluster.render(args.cluster))
                return 0
            applied = cluster.migrate(dsn, args.cluster)
        except cluster.ClusterSchemaError as exc:
            raise SystemExit(f"ingestd: {exc}") from None
    elif args.dry_run:  # nothing is opened: connecting alone would create an embedded database
        sys.stdout.write(clickhouse.render())
        return 0
    else:
        client = clickhouse.connect(dsn)
        try:
            applied = clickhouse.migrate(client)
        finally:
            client.close()
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def direct_query(dsn: str, sql: str, fmt: str, params: dict | None = None) -> bytes:
    """Run SQL on a database this process opens itself (the server must not be running on it)."""
    from . import clickhouse, reports

    if reports.held_by_server(dsn):  # checked first: chDB's own error would not say what to do
        raise SystemExit("ingestd: the embedded database is in use by a running server: "
                         "use --admin URL to query through it")
    try:
        client = clickhouse.connect(dsn)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "Cannot lock file" in text or "status" in text and "lock" in text.lower():
            raise SystemExit("ingestd: the embedded database is in use by a running server: "
                             "use --admin URL to query through it") from None
        raise SystemExit(f"ingestd: cannot open ClickHouse: {text.splitlines()[0] if text else exc}") from None
    from .admin import split_format

    sql, fmt = split_format(sql, fmt)
    try:
        return client.raw_query(sql, parameters=params or None, fmt=fmt, settings={"readonly": 1})
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"ingestd: {str(exc).strip().splitlines()[0]}") from None
    finally:
        client.close()


def cmd_query(args) -> int:
    sql = args.sql if args.sql != "-" else sys.stdin.read()
    if args.admin:  # as `report --admin` does: a POST, HOST:PORT accepted, the configured token by default
        from . import reports

        token = args.admin_token or config.load({}).admin_token
        out = reports.admin_request(args.admin, sql, {}, args.format, token)
    else:
        out = direct_query(args.clickhouse or config.load({}).clickhouse, sql, args.format)
    sys.stdout.write(out.decode("utf-8", "replace"))
    return 0


def cmd_replay(args) -> int:
    logs.setup("info")
    from pathlib import Path

    from .metrics import Metrics
    from .sink import replay
    from .spool import SpoolBusy

    dsn = args.clickhouse or config.load({}).clickhouse
    spool_dir = Path(args.spool or config.load({}).spool)
    metrics = Metrics()
    try:
        segments, rows = replay(dsn, spool_dir, metrics)
    except SpoolBusy as exc:
        print(f"ingestd: {exc}: stop it first (a running server ships its own spool)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - ClickHouse down or refusing: say so, keep the rest
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ingestd: replay stopped: {text}; unshipped segments stay in {spool_dir}, run it again",
              file=sys.stderr)
        return 1
    print(f"replayed {segments} segment(s), {rows} row(s) from {spool_dir}"
          + (f"; {metrics.segments_quarantined} refused segment(s) moved to failed/ in {spool_dir}"
             f"{' and its w<i> spools' if any(spool_dir.glob('w[0-9]*')) else ''}"
             if metrics.segments_quarantined else ""))
    return 1 if metrics.segments_quarantined else 0


def cmd_events(args) -> int:
    from .events import describe

    print("\n".join(describe()))
    return 0


def cmd_report(args) -> int:
    from . import reports

    return reports.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingestd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve beacons (migrates ClickHouse on start)")
    _add_settings_flags(p)
    p.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply schema/ to ClickHouse (idempotent)")
    p.add_argument("--clickhouse", help=f"DSN (env INGESTD_CLICKHOUSE; default {DEFAULT_DSN})")
    p.add_argument("--cluster", default="", help="create ReplicatedMergeTree + Distributed tables ON CLUSTER NAME")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it (every file, "
                   "the ON CLUSTER form with --cluster); opens nothing")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("query", help="run read-only SQL and print the result")
    p.add_argument("sql", help="the SQL, or - to read it from stdin")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--admin", metavar="URL", help="a running server's admin URL, e.g. http://127.0.0.1:9100 "
                   "or 127.0.0.1:9100")
    g.add_argument("--clickhouse", help="open this DSN directly (the server must not hold it)")
    p.add_argument("--admin-token", default=None, help="bearer token for --admin (env INGESTD_ADMIN_TOKEN)")
    p.add_argument("--format", default="PrettyCompactMonoBlock", help="ClickHouse output format")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("replay", help="ship a spool directory into ClickHouse without serving")
    p.add_argument("--spool", help="spool directory (default ./data/spool)")
    p.add_argument("--clickhouse", help=f"DSN (default {DEFAULT_DSN})")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("events", help="list the registered event types and their required fields")
    p.set_defaults(func=cmd_events)

    try:
        from . import reports

        reports.add_parser(sub)
    except ImportError:
        pass
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except config.ConfigError as exc:
        print(f"ingestd: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
