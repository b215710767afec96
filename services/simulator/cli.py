"""``python -m services.simulator <command>``: network, history, run, replay.

Examples:

    python -m services.simulator network --out net.yaml               # the default network, expanded
    python -m services.simulator history --start 2024-03-04 --duration 7d --step 60s --out data/history.parquet
    python -m services.simulator history --duration 2d --step 1s --zone riverside-plant --format wide-csv --out train.csv
    python -m services.simulator run --sink kafka --rate 200           # the demo: live network into readings.raw
    python -m services.simulator run --sink http --rate 1000 --duration 10m
    python -m services.simulator run --sink mqtt --format gas-station --rate 20   # through ingest's gas-station mapping
    python -m services.simulator run --sink kafka --speed max --count 1000000 --faults clean
    python -m services.simulator replay --data pump.csv --sink kafka --speed 10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from services.simulator.faults import PRESETS, FaultConfig
from services.simulator.formats import FORMATS, FormatEncoder, http_url, kafka_topic, mqtt_root
from services.simulator.generator import SimConfig
from services.simulator.incidents import DEFAULT_WEIGHTS, INCIDENT_TYPES
from services.simulator.labels import LabelFile, labels_path_for
from services.simulator.network import Network, NetworkError
from services.simulator.settings import ENV_PREFIX, SimulatorSettings
from services.simulator.simulator import Simulator
from services.simulator.sinks import FileSink, HttpSink, KafkaSink, MqttSink, Sink, SinkError
from shared.cli import Command, ServiceCli, settings_command
from shared.settings import Settings
from shared.timeutil import iso_ms, now_ms, parse_duration_ms, parse_time_ms
from shared.topics import LABELS, READINGS_RAW

log = logging.getLogger("flowwatch.simulator")
SINKS = ("kafka", "http", "mqtt", "file", "stdout")


def _weights(spec: str | None) -> dict[str, float]:
    if not spec:
        return dict(DEFAULT_WEIGHTS)
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in INCIDENT_TYPES:
            raise ValueError(f"unknown incident type {name!r}; known: {', '.join(INCIDENT_TYPES)}")
        out[name] = float(value) if value else 1.0
    return out


def _common(p: argparse.ArgumentParser, defaults: SimulatorSettings, faults: str, incident_scale: float) -> None:
    g = p.add_argument_group("simulation")
    g.add_argument("--seed", type=int, default=defaults.seed, help="seed of everything random (default %(default)s)")
    g.add_argument(
        "--network", default=defaults.network or None, help="network file (YAML/JSON); default network if unset"
    )
    g.add_argument("--scale", type=int, default=defaults.scale, help="copies of the default network's 4 sites")
    g.add_argument("--faults", default=faults, help=f"preset ({', '.join(PRESETS)}) and/or key=value fractions")
    g.add_argument(
        "--anomaly-fraction", type=float, default=defaults.anomaly_fraction, help="share of readings in incidents"
    )
    g.add_argument("--incident-scale", type=float, default=incident_scale, help="incident duration multiplier")
    g.add_argument("--incidents", default=None, help="incident weights, e.g. leak=1,spike=2 (others off)")
    g.add_argument(
        "--regime-shift",
        default=None,
        metavar="AT",
        help="the network changes regime at AT (a time, or a duration after the start such as 2h): every zone's "
        "demand, and all that follows it, becomes --regime-factor times what it was (no incident, no label)",
    )
    g.add_argument("--regime-factor", type=float, default=1.6, help="demand multiplier of --regime-shift")


def build_parser(defaults: SimulatorSettings | None = None) -> argparse.ArgumentParser:
    d = defaults or SimulatorSettings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m services.simulator",
        description="flowwatch simulator and load generator",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("network", help="print the network; --out writes its expanded description")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--network", default=d.network or None)
    p.add_argument("--scale", type=int, default=d.scale)
    p.add_argument("--out", help="write the expanded network here (.yaml or .json)")

    p = sub.add_parser("history", help="write a time range of readings to a file, faster than real time")
    p.add_argument("--start", default="2024-03-04T00:00:00Z", help="ISO 8601, epoch ms, or 'now' (default %(default)s)")
    p.add_argument("--duration", default="1d", help="e.g. 90m, 12h, 7d (default %(default)s)")
    p.add_argument("--step", default=None, help="one aligned grid for every sensor (e.g. 60s); default: own intervals")
    p.add_argument("--out", required=True, help=".parquet, .csv or .ndjson (raw payloads); or --format wide-csv")
    p.add_argument("--format", choices=["parquet", "csv", "ndjson", "wide-csv"], default=None)
    p.add_argument("--zone", action="append", help="wide-csv: only these zones (repeatable)")
    p.add_argument("--site", action="append", help="wide-csv: only these sites (repeatable)")
    p.add_argument("--sensor", action="append", help="wide-csv: only these sensors (repeatable)")
    p.add_argument("--labels", help="labels file (.jsonl or .csv); default beside --out")
    p.add_argument("--no-progress", action="store_true")
    _common(p, d, faults="clean", incident_scale=1.0)

    p = sub.add_parser("run", help="stream the network into a sink: real time, accelerated, or as fast as possible")
    p.add_argument("--sink", choices=SINKS, default="kafka")
    p.add_argument("--rate", type=float, default=d.rate or None, help="target readings/s (sensors report faster)")
    p.add_argument("--speed", default="1", help="simulated seconds per wall second, or 'max' (default 1: real time)")
    p.add_argument(
        "--start", default=None, help="simulated start (default now; with --speed>1 and --duration, now-duration)"
    )
    p.add_argument("--duration", default=None, help="simulated time to cover, e.g. 10m; default: until stopped")
    p.add_argument("--count", type=int, default=None, help="stop after this many messages")
    p.add_argument("--topic", default=READINGS_RAW.name, help="kafka topic, before the prefix (default %(default)s)")
    p.add_argument("--url", default=d.ingest_url, help="http: ingest endpoint (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.http_batch, help="http: readings per request")
    p.add_argument("--http-format", choices=HttpSink.FORMATS, default=d.http_format, help="http: request body")
    p.add_argument("--qos", type=int, default=d.mqtt_qos, choices=[0, 1], help="mqtt QoS")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="native",
        help="device format: native, or the one a payload mapping of ingest reads (then kafka goes to"
        " <format>.raw, mqtt under the mapping's topic, http with ?mapping=<format>; default %(default)s)",
    )
    p.add_argument(
        "--site",
        action="append",
        default=None,
        help="send only this site's sensors (repeatable; --rate still counts all)",
    )
    p.add_argument("--out", default=None, help="file: NDJSON path of raw payloads")
    p.add_argument("--labels", default=None, help="also write labels to this file (.jsonl or .csv)")
    p.add_argument(
        "--labels-topic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="publish labels to the labels topic (default: on for --sink kafka)",
    )
    p.add_argument("--report", default=None, help="write the final report (JSON) here too")
    p.add_argument("--progress", action="store_true", help="progress bar (with --duration or --count)")
    _common(p, d, faults=d.faults, incident_scale=d.incident_scale)

    p = sub.add_parser("replay", help="stream a CSV (timestamp + sensor columns) into a sink")
    p.add_argument("--data", required=True, help="CSV file")
    p.add_argument("--time-column", default="timestamp")
    p.add_argument("--sink", choices=SINKS, default="kafka")
    p.add_argument("--speed", default="1", help="1 = original pace, K = K times faster, 'max' = no pacing")
    p.add_argument("--timestamps", choices=["auto", "original", "shift", "wall"], default="auto")
    p.add_argument("--sensor-id", default=None, help="device id (default: the file name)")
    p.add_argument("--per-column", action="store_true", help="each column is its own sensor")
    p.add_argument("--mapping", default=None, help="YAML/JSON {column: {sensor_id, metric, unit}}")
    p.add_argument("--site", default="replay")
    p.add_argument("--zone", default=None)
    p.add_argument("--utility", default="water", choices=["water", "energy", "gas"])
    p.add_argument("--asset", default="pump")
    p.add_argument("--topic", default=READINGS_RAW.name)
    p.add_argument("--url", default=d.ingest_url)
    p.add_argument("--batch-size", type=int, default=d.http_batch)
    p.add_argument("--http-format", choices=HttpSink.FORMATS, default=d.http_format)
    p.add_argument("--qos", type=int, default=d.mqtt_qos, choices=[0, 1])
    p.add_argument("--out", default=None)
    p.add_argument("--report", default=None)
    return parser


def _network(args: argparse.Namespace) -> Network:
    if args.network:
        return Network.load(args.network, seed=args.seed)
    return Network.default(args.seed, scale=args.scale)


def _config(args: argparse.Namespace, start_ms: int, **extra: Any) -> SimConfig:
    return SimConfig(
        anomaly_fraction=args.anomaly_fraction,
        incident_weights=_weights(args.incidents),
        incident_scale=args.incident_scale,
        faults=FaultConfig.parse(args.faults),
        regime_shift_ms=regime_shift_ms(args.regime_shift, start_ms),
        regime_factor=args.regime_factor,
        **extra,
    )


def regime_shift_ms(at: str | None, start_ms: int) -> int | None:
    """``--regime-shift``: a duration after the start (``90m``, ``2h``) or a time (ISO 8601, or a bare number:
    epoch ms)."""
    if not at:
        return None
    if at.strip().isdigit():
        return int(at)
    try:
        return start_ms + parse_duration_ms(at)
    except ValueError:
        return parse_time_ms(at)


def _speed(text: str) -> float | None:
    if text.strip().lower() in ("max", "inf", "0"):
        return None
    value = float(text)
    if value <= 0:
        raise ValueError("--speed must be positive or 'max'")
    return value


def cmd_network(args: argparse.Namespace) -> int:
    net = _network(args)
    print(net.summary())
    if args.out:
        net.save(args.out)
        print(f"wrote {args.out}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    sim = Simulator(_network(args), _config(args, parse_time_ms(args.start)), seed=args.seed)
    fmt = args.format or None
    progress = not args.no_progress and sys.stderr.isatty()
    if fmt == "wide-csv":
        hist = sim.history(args.start, args.duration, step=args.step, progress=progress)
        labels_csv = hist.to_wide_csv(args.out, zone=args.zone, sensors=args.sensor, site=args.site)
        labels_path = Path(args.labels) if args.labels else labels_path_for(args.out)
        from services.simulator.labels import write_labels

        zones = set(args.zone or [])
        sites = set(args.site or [])
        sensors = set(args.sensor or [])
        chosen = [
            lab
            for lab in hist.labels
            if (not zones or lab.zone in zones)
            and (not sites or lab.site in sites)
            and (not sensors or sensors & set(lab.sensors))
        ]
        write_labels(labels_path, chosen)
        summary = {
            "path": args.out,
            "format": fmt,
            "row_labels": str(labels_csv),
            "labels": str(labels_path),
            "incidents": len(chosen),
        }
    else:
        summary = sim.write_history(
            args.out, args.start, args.duration, step=args.step, fmt=fmt, labels_path=args.labels, progress=progress
        )
    print(orjson.dumps(summary).decode())
    return 0


def _make_sink(
    args: argparse.Namespace, settings: Settings, sim_settings: SimulatorSettings, ids: list[str], sites: list[str]
) -> Sink:
    fmt = getattr(args, "format", "native")  # replay has no --format
    if args.sink == "kafka":
        topic = kafka_topic(fmt, args.topic) if args.topic == READINGS_RAW.name else args.topic
        return KafkaSink(
            settings.bootstrap_servers,
            settings.topic(topic),
            ids,
            linger_ms=sim_settings.kafka_linger_ms,
            batch_bytes=sim_settings.kafka_batch_bytes,
        )
    if args.sink == "http":
        return HttpSink(
            http_url(fmt, args.url),
            sim_settings.ingest_token,
            batch_size=args.batch_size,
            concurrency=sim_settings.http_concurrency,
            fmt=args.http_format,
        )
    if args.sink == "mqtt":
        return MqttSink(settings.mqtt_url, ids, sites, root=mqtt_root(fmt, sim_settings.mqtt_topic), qos=args.qos)
    if args.sink == "file":
        if not args.out:
            raise ValueError("--sink file needs --out PATH")
        return FileSink(args.out)
    return FileSink(None)


class _LabelTopic:
    """Labels to the labels topic, through the Kafka sink's producer or a small one of its own."""

    def __init__(self, settings: Settings, sink: Sink):
        self.settings = settings
        self.topic = settings.topic(LABELS.name)
        self.sink = sink if isinstance(sink, KafkaSink) else None
        self.own: KafkaSink | None = None

    async def start(self) -> None:
        if self.sink is None:
            self.own = KafkaSink(self.settings.bootstrap_servers, self.topic, [], linger_ms=5)
            await self.own.start()
        else:
            await self.sink.require_topic(self.topic)

    async def __call__(self, label: Any) -> None:
        producer = self.sink or self.own
        assert producer is not None
        await producer.produce_one(self.topic, label.incident_id.encode(), orjson.dumps(label.to_dict()))

    async def stop(self) -> None:
        if self.own is not None:
            await self.own.stop()


def _install_signals(stop: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):
            pass


def _emit_report(report: dict[str, Any], path: str | None, to_stderr: bool) -> None:
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text, file=sys.stderr if to_stderr else sys.stdout)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


async def cmd_run(args: argparse.Namespace, sim_settings: SimulatorSettings) -> int:
    from services.simulator.runner import Runner, RunOptions

    settings = Settings.from_env("simulator")
    net = _network(args)
    speed = _speed(args.speed)
    interval_scale = 1.0
    if args.rate:
        if args.rate <= 0:
            raise ValueError("--rate must be positive")
        # Sensors report more often, so the network as a whole sends --rate readings per simulated second.
        interval_scale = net.natural_rate() / args.rate
    duration_ms = parse_duration_ms(args.duration) if args.duration else None
    if args.start:
        start_ms = parse_time_ms(args.start)
    elif speed is not None and speed > 1 and duration_ms:
        start_ms = now_ms() - duration_ms  # a backfill that catches up with the present as it ends
    else:
        start_ms = now_ms()
    sim = Simulator(net, _config(args, start_ms, interval_scale=interval_scale), seed=args.seed)
    engine = sim.engine()
    sink = _make_sink(args, settings, sim_settings, [s.id for s in net.sensors], [s.site for s in net.sensors])
    unknown = set(args.site or ()) - {s.site for s in net.sensors}
    if unknown:
        raise ValueError(f"no such site: {', '.join(sorted(unknown))}")
    labels_topic = args.labels_topic if args.labels_topic is not None else args.sink == "kafka"
    log.info(
        "simulator starting",
        extra={
            "sink": sink.name,
            "target": sink.target,
            "sensors": len(net),
            "rate_per_s": round(engine.rate_per_s * (speed or 1), 1) if speed else "max",
            "speed": speed or "max",
            "start": iso_ms(start_ms),
            "seed": args.seed,
            "faults": FaultConfig.parse(args.faults).to_dict(),
            "labels_topic": labels_topic,
            "format": args.format,
            "sites": args.site or "all",
        },
    )
    topic = _LabelTopic(settings, sink) if labels_topic else None
    label_file: LabelFile | None = None
    await sink.start()
    try:
        if topic is not None:
            await topic.start()
        label_file = LabelFile(args.labels) if args.labels else None
        runner = Runner(
            engine,
            sink,
            RunOptions(
                start_ms=start_ms,
                duration_ms=duration_ms,
                speed=speed,
                max_messages=args.count,
                tick_ms=sim_settings.tick_ms,
                progress=args.progress,
                sites=tuple(args.site or ()),
            ),
            label_publishers=[topic] if topic else [],
            label_file=label_file,
            encoder=None if args.format == "native" else FormatEncoder(engine, args.format),
        )
        _install_signals(runner.stop)
        report = await runner.run()
    finally:
        try:
            await sink.stop()
        finally:
            if topic is not None:
                await topic.stop()
            if label_file is not None:
                label_file.close()
    out = report.to_dict(sink)
    if args.labels:
        out["labels_file"] = args.labels
    if topic is not None:
        out["labels_topic"] = topic.topic
    _emit_report(out, args.report, to_stderr=args.sink == "stdout")
    return 0 if sink.stats.failed == 0 else 2


async def cmd_replay(args: argparse.Namespace, sim_settings: SimulatorSettings) -> int:
    from services.simulator.replay import ReplaySource, replay

    settings = Settings.from_env("simulator")
    source = ReplaySource.read(
        args.data,
        time_column=args.time_column,
        sensor_id=args.sensor_id,
        per_column=args.per_column,
        mapping=args.mapping,
        site=args.site,
        zone=args.zone,
        utility=args.utility,
        asset=args.asset,
    )
    ids = source.sensors
    sink = _make_sink(args, settings, sim_settings, ids, [source.site] * len(ids))
    await sink.start()
    stop = asyncio.Event()
    _install_signals(stop.set)
    try:
        report = await replay(
            source,
            sink,
            {s: i for i, s in enumerate(ids)},
            speed=_speed(args.speed),
            timestamps=args.timestamps,
            stop=stop,
        )
    finally:
        await sink.stop()
    _emit_report(report.to_dict(sink), args.report, to_stderr=args.sink == "stdout")
    return 0 if sink.stats.failed == 0 else 2


def _command(name: str) -> Callable[[list[str]], int]:
    """One subcommand of :func:`build_parser`; options it cannot use are usage errors (exit 2, one line)."""

    def run(argv: list[str]) -> int:
        sim_settings = SimulatorSettings.from_env()
        args = build_parser(sim_settings).parse_args([name, *argv])
        try:
            if name == "network":
                return cmd_network(args)
            if name == "history":
                return cmd_history(args)
            if name == "run":
                return asyncio.run(cmd_run(args, sim_settings))
            return asyncio.run(cmd_replay(args, sim_settings))
        except (SinkError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


CLI = ServiceCli(
    "simulator",
    "The simulator and load generator: a utility network's readings, with labelled incidents.",
    {
        "network": Command(_command("network"), "print the network; --out writes its expanded description"),
        "history": Command(_command("history"), "write a time range of readings to a file, faster than real time"),
        "run": Command(_command("run"), "stream the network into a sink: real time, accelerated, or at full speed"),
        "replay": Command(_command("replay"), "stream a CSV (timestamp + sensor columns) into a sink"),
        "settings": settings_command(SimulatorSettings, ENV_PREFIX, "simulator"),
    },
    usage_errors=(ValueError, NetworkError, KeyError),
    log_level="INFO",
    epilog=__doc__.split("\n", 1)[1],
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)


__all__ = ["build_parser", "main", "replace"]
