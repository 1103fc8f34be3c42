"""Load YAML into frozen models, keeping file and line for every error.

No file can break the loader: before a byte is parsed the path must be a
regular file of sane size (a FIFO or a device would block or never end);
aliases may not expand the document past :data:`MAX_NODES` nodes (a "billion
laughs" file is refused, not expanded); nesting deeper than :data:`MAX_DEPTH`
is refused; NaN and infinities are refused wherever a number goes (the
models forbid them). Every problem becomes a one-line :class:`ConfigIssue`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from edge.config._models import (
    PROTOCOL_OF_BUS,
    Device,
    LoadedSite,
    ModbusActuator,
    ModbusRtuBus,
    ModbusTag,
    OpcUaBus,
    SensorProfile,
    SerialLineBus,
    SiteConfig,
)
from edge.config._rules import RULE_TYPES
from edge.config._yaml import YamlLimitError, read_yaml

PACKAGED_PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs" / "sensors"

MAX_FILE_BYTES = 32 * 1024 * 1024  # a 10,000-tag site is about 3 MB
MAX_NODES = 2_000_000  # scalars + containers after alias expansion
MAX_ALIASES = 10_000
MAX_DEPTH = 64

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in one file: where it is and what is wrong."""

    file: str
    line: int | None  # 1-based
    device: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        dev = f" device {self.device}" if self.device else ""
        message = " ".join(self.message.split())  # one line, whatever the cause said
        return f"{where}:{dev} {self.field}: {message}"


class ConfigError(Exception):
    """A configuration file was rejected; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def _file_issue(file: str, message: str) -> ConfigError:
    return ConfigError([ConfigIssue(file, None, None, "(file)", message)])


def _read_text(path: Path) -> str:
    """The file's text, refusing anything but a regular file of sane size *before* opening it."""
    file = str(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _file_issue(file, f"cannot read: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise _file_issue(file, "is a directory, not a YAML file")
    if not stat.S_ISREG(info.st_mode):
        raise _file_issue(file, "not a regular file (FIFO, socket or device); refused unread")
    if info.st_size > MAX_FILE_BYTES:
        raise _file_issue(file, f"{info.st_size} bytes is over the {MAX_FILE_BYTES} byte limit")
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _file_issue(file, f"grew past the {MAX_FILE_BYTES} byte limit while read")
    return data.decode("utf-8")


def _check_nesting(file: str, text: str) -> None:
    """Refuse deep nesting before parsing (a YAML parser recurses, and slowly).

    Counts flow brackets outside quotes and comments, and block indentation;
    either past :data:`MAX_DEPTH` levels is refused.
    """
    depth = deepest = 0
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped and not stripped.startswith("#") and indent > 2 * MAX_DEPTH:
            raise _file_issue(file, f"nested deeper than {MAX_DEPTH} levels; refused")
        if "[" not in stripped and "{" not in stripped and not depth:
            continue
        quote = ""
        for ch in stripped:
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                break
            elif ch in "[{":
                depth += 1
                if depth > deepest:
                    deepest = depth
                    if deepest > MAX_DEPTH:
                        raise _file_issue(file, f"nested deeper than {MAX_DEPTH} levels; refused")
            elif ch in "]}":
                depth = max(0, depth - 1)


class _Document:
    """A parsed YAML document that can say which line a field path is on."""

    def __init__(self, path: Path) -> None:
        self.file = str(path)
        try:
            text = _read_text(path)
        except OSError as exc:
            raise ConfigError(
                [ConfigIssue(self.file, None, None, "(file)", f"cannot read: {exc.strerror}")]
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [ConfigIssue(self.file, None, None, "(file)", f"not UTF-8 text: {exc.reason}")]
            ) from exc
        _check_nesting(self.file, text)
        try:
            self.root, self.lines = read_yaml(
                text, max_nodes=MAX_NODES, max_aliases=MAX_ALIASES, max_depth=MAX_DEPTH
            )
        except YamlLimitError as exc:
            raise ConfigError(
                [ConfigIssue(self.file, exc.line, None, "(document)", str(exc))]
            ) from exc
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = exc.problem or exc.context or "malformed YAML"
            raise ConfigError(
                [ConfigIssue(self.file, line, None, "(syntax)", f"malformed YAML: {problem}")]
            ) from exc
        except YAMLError as exc:
            raise ConfigError(
                [ConfigIssue(self.file, None, None, "(syntax)", f"malformed YAML: {exc}")]
            ) from exc
        if not isinstance(self.root, dict):
            raise ConfigError(
                [ConfigIssue(self.file, 1, None, "(document)", "expected a mapping at the top")]
            )

    def line_of(self, loc: Loc) -> int | None:
        node: Any = self.root
        line: int | None = 1
        for part in loc:
            if isinstance(node, dict) and isinstance(part, str) and part in node:
                line = self.lines.key_line(node, part) or line
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                line = self.lines.item_line(node, part) or line
                node = node[part]
            elif isinstance(node, dict) and isinstance(part, str):
                # a missing field, or a pydantic union tag: stay on the parent
                continue
            else:
                break
        return line

    def device_of(self, loc: Loc) -> str | None:
        if len(loc) >= 2 and loc[0] in ("devices", "actuators") and isinstance(loc[1], int):
            seq = self.root.get(loc[0])
            if isinstance(seq, list) and 0 <= loc[1] < len(seq):
                item = seq[loc[1]]
                if isinstance(item, dict):
                    key = "id" if loc[0] == "devices" else "device"
                    value = item.get(key)
                    return str(value) if value is not None else None
        return None

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        field = ".".join(str(p) for p in loc) or "(document)"
        return ConfigIssue(self.file, self.line_of(loc), self.device_of(loc), field, message)

    def validate(self, model: type[M]) -> M:
        try:
            return model.model_validate(self.root)
        except ValidationError as exc:
            errors = [(_clean_loc(e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
            # a list whose items failed also reports "too short": only noise then
            kept = [
                (loc, msg)
                for loc, kind, msg in errors
                if not (
                    kind == "too_short" and any(o[: len(loc)] == loc != o for o, _, _ in errors)
                )
            ]
            raise ConfigError([self.issue(loc, msg) for loc, msg in kept]) from exc


# pydantic puts the discriminator's value in an error's location; it is no YAML key
_UNION_TAGS = frozenset(PROTOCOL_OF_BUS) | frozenset(PROTOCOL_OF_BUS.values())


def _clean_loc(loc: Iterable[str | int]) -> Loc:
    return _drop_rule_type(tuple(p for p in loc if p not in _UNION_TAGS))


def _drop_rule_type(loc: Loc) -> Loc:
    # rules.<i>.<type>.field -> rules.<i>.field (the rule type is the union's tag)
    if len(loc) >= 3 and loc[0] == "rules" and isinstance(loc[1], int) and loc[2] in RULE_TYPES:
        return (*loc[:2], *loc[3:])
    return loc


def load_model(path: str | Path, model: type[M]) -> M:
    """Load any YAML file into ``model``; errors carry file, line and field."""
    return _Document(Path(path)).validate(model)


def load_profile(path: Path) -> SensorProfile:
    return _Document(path).validate(SensorProfile)


def load_profiles(directory: Path = PACKAGED_PROFILES) -> dict[str, SensorProfile]:
    """Every ``*.yaml`` profile in ``directory``, keyed by id."""
    profiles: dict[str, SensorProfile] = {}
    issues: list[ConfigIssue] = []
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError([ConfigIssue(str(directory), None, None, "(dir)", "no *.yaml profiles")])
    for file in files:
        try:
            profile = load_profile(file)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        if profile.id in profiles:
            issues.append(
                ConfigIssue(str(file), 1, None, "id", f"duplicate profile {profile.id!r}")
            )
        profiles[profile.id] = profile
    if issues:
        raise ConfigError(issues)
    return profiles


def load_site(path: str | Path, profiles: Mapping[str, SensorProfile] | None = None) -> LoadedSite:
    """Load and fully validate a site file; raise :class:`ConfigError` listing every issue."""
    doc = _Document(Path(path))
    config = doc.validate(SiteConfig)
    known = dict(profiles) if profiles is not None else load_profiles()
    issues = list(_cross_check(doc, config, known))
    if issues:
        raise ConfigError(issues)
    used = {t.profile for d in config.devices for t in d.tags}
    return LoadedSite(source=str(path), config=config, profiles={p: known[p] for p in sorted(used)})


def _duplicates(doc: _Document, section: str, ids: list[str]) -> Iterable[ConfigIssue]:
    seen: set[str] = set()
    for i, ident in enumerate(ids):
        if ident in seen:
            yield doc.issue((section, i, "id"), f"duplicate id {ident!r}")
        seen.add(ident)


SAFETY_MAX_POLL_MS = 10_000  # AQ 6201: safety sensors are scanned at least every 10 s


def buffer_path_problem(path: str | Path) -> str | None:
    """Why the durable buffer cannot live at ``path`` (None when it can)."""
    target = Path(path)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        return f"{target}: cannot use: {exc.strerror}"
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            return f"{target} is a directory; give a file path such as {target / 'buffer.db'}"
        if not stat.S_ISREG(info.st_mode):
            return f"{target} is not a regular file (FIFO, socket or device)"
        if not os.access(target, os.R_OK | os.W_OK):
            return f"{target} is not readable and writable by this user"
        return None
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the buffer creates missing directories
    if not parent.is_dir():
        return f"{parent} is not a directory; the buffer cannot be created under it"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the buffer under {parent}: not writable"
    return None


def _timing(
    doc: _Document, di: int, device: Device, timeout_ms: int, profiles: Mapping[str, SensorProfile]
) -> Iterable[ConfigIssue]:
    """Staleness and timeouts must fit the poll period, or a healthy device looks dead."""
    stale_ms = round(device.stale_after_s * 1000)
    need = device.poll_ms + timeout_ms
    if stale_ms < need:
        field = "stale_after_ms" if device.stale_after_ms is not None else "poll_ms"
        yield doc.issue(
            ("devices", di, field),
            f"stale_after_ms {stale_ms}{'' if device.stale_after_ms else ' (3 x poll_ms)'} "
            f"must be at least poll_ms {device.poll_ms} + bus timeout_ms {timeout_ms} = {need}, "
            "or one slow answer marks a healthy sensor stale",
        )
    safety = [t for t in device.tags if (p := profiles.get(t.profile)) and p.priority == "safety"]
    if safety and device.poll_ms > SAFETY_MAX_POLL_MS:
        yield doc.issue(
            ("devices", di, "poll_ms"),
            f"poll_ms {device.poll_ms} is over {SAFETY_MAX_POLL_MS} for safety sensor "
            f"{safety[0].name} (AQ 6201: scan at least every 10 s)",
        )


def _cross_check(
    doc: _Document, config: SiteConfig, profiles: Mapping[str, SensorProfile]
) -> Iterable[ConfigIssue]:
    yield from _duplicates(doc, "buses", [b.id for b in config.buses])
    yield from _duplicates(doc, "devices", [d.id for d in config.devices])
    yield from _duplicates(doc, "actuators", [a.id for a in config.actuators])
    buses = {b.id: b for b in config.buses}
    devices = {d.id for d in config.devices}
    actuators = {a.id for a in config.actuators}
    tag_names: dict[str, str] = {}
    endpoints: dict[tuple[str, int], str] = {}
    problem = buffer_path_problem(config.buffer.path)
    if problem is not None:
        yield doc.issue(("buffer", "path"), problem)
    owners: dict[str, str] = {}
    for bi, bus in enumerate(config.buses):
        if isinstance(bus, OpcUaBus):
            where = bus.endpoint
        else:
            where = (
                bus.port
                if isinstance(bus, ModbusRtuBus | SerialLineBus)
                else f"{bus.host}:{bus.port}"
            )
        if where in owners:
            yield doc.issue(
                ("buses", bi, "endpoint" if isinstance(bus, OpcUaBus) else "port"),
                f"{where} is already bus {owners[where]!r} (one bus owns one port or endpoint)",
            )
        owners.setdefault(where, bus.id)

    for di, device in enumerate(config.devices):
        known_bus = buses.get(device.bus)
        if known_bus is None:
            yield doc.issue(("devices", di, "bus"), f"unknown bus {device.bus!r}")
        else:
            yield from _timing(doc, di, device, known_bus.timeout_ms, profiles)
        key = (device.bus, device.unit_id)
        if isinstance(known_bus, OpcUaBus | SerialLineBus):
            pass  # told apart by their nodes or keys, not by a unit
        elif key in endpoints:
            yield doc.issue(
                ("devices", di, "unit_id"),
                f"unit {device.unit_id} on bus {device.bus!r} is already device {endpoints[key]!r}",
            )
        endpoints[key] = device.id
        used: dict[tuple[str, int], str] = {}
        for ti, tag in enumerate(device.tags):
            at = ("devices", di, "tags", ti)
            if tag.name in tag_names:
                yield doc.issue(
                    (*at, "name"), f"tag {tag.name!r} already defined on {tag_names[tag.name]!r}"
                )
            tag_names[tag.name] = device.id
            profile = profiles.get(tag.profile)
            if profile is None:
                yield doc.issue(
                    (*at, "profile"),
                    f"unknown profile {tag.profile!r}; known: {', '.join(sorted(profiles))}",
                )
            elif (
                tag.thresholds is None
                and profile.thresholds
                and profile.thresholds_for(tag.location.position) is None
            ):
                yield doc.issue(
                    (*at, "location", "position"),
                    f"profile {profile.id!r} has no thresholds for position "
                    f"{tag.location.position!r}; known: {', '.join(sorted(profile.thresholds))}"
                    " (or give the tag its own 'thresholds')",
                )
            if isinstance(tag, ModbusTag):
                for reg in tag.registers:
                    other = used.get((tag.table, reg))
                    if other is not None:
                        yield doc.issue(
                            (*at, "address"),
                            f"{tag.table} register {reg} overlaps tag {other!r}",
                        )
                        break
                for reg in tag.registers:
                    used[(tag.table, reg)] = tag.name
            for ai, actuator in enumerate(tag.actuators):
                if actuator not in actuators:
                    yield doc.issue((*at, "actuators", ai), f"unknown actuator {actuator!r}")

    for mi, assignment in enumerate(config.inference.assign):
        for ti, tag_name in enumerate(assignment.tags):
            if tag_name not in tag_names:
                yield doc.issue(
                    ("inference", "assign", mi, "tags", ti),
                    f"model {assignment.model!r}: unknown tag {tag_name!r}",
                )
    assigned = {t for a in config.inference.assign for t in a.tags}
    for wi, source in enumerate(config.inference.waveforms):
        if source.tag not in tag_names:
            yield doc.issue(("inference", "waveforms", wi, "tag"), f"unknown tag {source.tag!r}")
        elif source.tag not in assigned:
            yield doc.issue(
                ("inference", "waveforms", wi, "tag"),
                f"no model is assigned to tag {source.tag!r}; its blocks would go nowhere",
            )
        else:
            yield from _waveform_bus_issues(doc, config, profiles, wi, tag_names[source.tag])

    coils: dict[tuple[str, int], str] = {}
    for ai, act in enumerate(config.actuators):
        if act.device not in devices:
            yield doc.issue(("actuators", ai, "device"), f"unknown device {act.device!r}")
        if not isinstance(act, ModbusActuator):
            continue
        if (act.device, act.coil) in coils:
            yield doc.issue(
                ("actuators", ai, "coil"),
                f"coil {act.coil} of {act.device!r} is already actuator "
                f"{coils[(act.device, act.coil)]!r}",
            )
        coils[(act.device, act.coil)] = act.id

    yield from _check_rules(doc, config, profiles, actuators)
    yield from _check_alarm_settings(doc, config)


def _check_alarm_settings(doc: _Document, config: SiteConfig) -> Iterable[ConfigIssue]:
    """Routes name known shifts; annunciators drive horns and lights that nothing else
    drives (an acknowledgement must be able to silence them)."""
    shifts = {s.name for s in config.alarms.shifts}
    yield from _check_notification_urls(doc, config)
    for ri, route in enumerate(config.notifications):
        for si, name in enumerate(route.shifts):
            if name not in shifts:
                known = ", ".join(sorted(shifts)) or "none defined in alarms.shifts"
                yield doc.issue(
                    ("notifications", ri, "shifts", si), f"unknown shift {name!r} (known: {known})"
                )
    yield from _check_consoles(doc, config)
    kinds = {a.id: a.kind for a in config.actuators}
    driven = {a for d in config.devices for t in d.tags for a in t.actuators} | {
        row.effect for row in config.interlocks
    }
    for ai, ann in enumerate(config.alarms.annunciators):
        at = ("alarms", "annunciators", ai, "actuator")
        kind = kinds.get(ann.actuator)
        if kind is None:
            yield doc.issue(at, f"unknown actuator {ann.actuator!r}")
        elif kind not in ("horn", "light"):
            yield doc.issue(
                at, f"actuator {ann.actuator!r} is a {kind}: annunciators drive horns and lights"
            )
        elif ann.actuator in driven:
            yield doc.issue(
                at,
                f"actuator {ann.actuator!r} is also driven by a tag or interlock row: "
                "an acknowledgement could not silence it",
            )


def _check_notification_urls(doc: _Document, config: SiteConfig) -> Iterable[ConfigIssue]:
    """Every notification URL is one apprise can send to (the scheme is named, never the
    URL: it may hold a token or a password)."""
    if not config.notifications:
        return
    import apprise  # only where notifications are configured

    for ri, route in enumerate(config.notifications):
        for field, urls in (("urls", route.urls), ("escalate_to", route.escalate_to)):
            for ui, url in enumerate(urls):
                if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
                    scheme = url.split("://", 1)[0] if "://" in url else "(no scheme)"
                    yield doc.issue(
                        ("notifications", ri, field, ui),
                        f"apprise cannot send to this {scheme}:// URL (unknown service, or a "
                        "token, host or option it refuses)",
                    )


def _check_consoles(doc: _Document, config: SiteConfig) -> Iterable[ConfigIssue]:
    """Operator consoles: unique ids, an area answered by one console only, and (when any
    console is configured) every tag's area answered by one: an alarm no operator counts
    would escape the flood limit and the KPIs."""
    consoles = config.alarms.consoles
    if not consoles:
        return
    owner: dict[str, str] = {}
    ids: set[str] = set()
    for ci, console in enumerate(consoles):
        if console.id in ids:
            yield doc.issue(("alarms", "consoles", ci, "id"), f"duplicate console {console.id!r}")
        ids.add(console.id)
        for ai, area in enumerate(console.areas):
            if area in owner and owner[area] != console.id:
                yield doc.issue(
                    ("alarms", "consoles", ci, "areas", ai),
                    f"area {area!r} is already answered by console {owner[area]!r}: "
                    "an area has one operator console",
                )
            owner.setdefault(area, console.id)
    known = ", ".join(c.id for c in consoles)
    for di, device in enumerate(config.devices):
        for ti, tag in enumerate(device.tags):
            if tag.location.area not in owner:
                yield doc.issue(
                    ("devices", di, "tags", ti, "location", "area"),
                    f"area {tag.location.area!r} of tag {tag.name} is answered by no operator "
                    f"console (alarms.consoles: {known}); add it to one",
                )


def _check_rules(
    doc: _Document,
    config: SiteConfig,
    profiles: Mapping[str, SensorProfile],
    actuators: set[str],
) -> Iterable[ConfigIssue]:
    """Rules name known tags, actuators and rules; the matrix names known effects and causes."""
    tags = {t.name: t for d in config.devices for t in d.tags}
    yield from _duplicates(doc, "rules", [r.id for r in config.rules])
    rule_ids = {r.id for r in config.rules}
    for ri, rule in enumerate(config.rules):
        at = ("rules", ri)
        if rule.id in tags:
            yield doc.issue((*at, "id"), f"rule id {rule.id!r} is already a tag's threshold rule")
        refs: list[tuple[str, str]] = []
        if rule.type in ("limits", "zones", "rate", "stuck", "spike", "drift", "feedback"):
            refs.append(("tag", rule.tag))
        if rule.type == "drift":
            refs.append(("neighbour", rule.neighbour))
        if rule.type == "fan_lockout":
            refs.append(("fan", rule.fan))
            refs.extend(("methane", m) for m in rule.methane)
        for field, name in refs:
            if name not in tags:
                yield doc.issue((*at, field), f"unknown tag {name!r}")
        if rule.type == "fan_lockout":
            for mi, name in enumerate(rule.methane):
                tag = tags.get(name)
                if tag is None or tag.profile not in profiles:
                    continue
                th = tag.thresholds or profiles[tag.profile].thresholds_for(tag.location.position)
                if th is None or th.restore is None:
                    yield doc.issue(
                        (*at, "methane", mi), f"tag {name!r} has no restore limit to wait for"
                    )
        if rule.type == "feedback" and rule.actuator not in actuators:
            yield doc.issue((*at, "actuator"), f"unknown actuator {rule.actuator!r}")
        if rule.type == "limits":
            tag = tags.get(rule.tag)
            profile = profiles.get(tag.profile) if tag is not None else None
            for li, lim in enumerate(rule.limits):
                if profile is not None and profile.fail_safe and lim.name.severe and lim.on_delay_s:
                    yield doc.issue(
                        (*at, "limits", li, "on_delay_s"),
                        f"{lim.name} cuts on fail-safe profile {profile.id!r}: "
                        "a cut never waits for an on-delay",
                    )
        if rule.type == "compound":
            field = "all" if rule.all else "any"
            for mi, member in enumerate(rule.members):
                if member not in rule_ids and member not in tags:
                    yield doc.issue((*at, field, mi), f"unknown rule {member!r}")
                elif member == rule.id:
                    yield doc.issue((*at, field, mi), "a compound rule cannot contain itself")
    known_causes = rule_ids | set(tags)
    for ii, row in enumerate(config.interlocks):
        if row.effect not in actuators:
            yield doc.issue(("interlocks", ii, "effect"), f"unknown actuator {row.effect!r}")
        for ci, cause in enumerate(row.causes):
            if cause not in known_causes:
                yield doc.issue(
                    ("interlocks", ii, "causes", ci),
                    f"unknown rule {cause!r} (a rule id, or a tag name for its thresholds)",
                )


def _waveform_bus_issues(
    doc: _Document,
    config: SiteConfig,
    profiles: Mapping[str, SensorProfile],
    wi: int,
    device_id: str,
) -> Iterable[ConfigIssue]:
    """A waveform source must be addressed the way its device's bus speaks, and a block
    (tens of requests) is never read over a serial line that protects people."""
    at = ("inference", "waveforms", wi)
    source = config.inference.waveforms[wi]
    device = next((d for d in config.devices if d.id == device_id), None)
    bus = next((b for b in config.buses if device and b.id == device.bus), None)
    if bus is None:
        return
    opcua = source.address is None
    if isinstance(bus, SerialLineBus):
        yield doc.issue((*at, "tag"), f"bus {bus.id!r} is a serial_line bus; it carries no blocks")
    elif isinstance(bus, OpcUaBus) and not opcua:
        yield doc.issue(
            (*at, "address"),
            f"bus {bus.id!r} is OPC UA: give the block's array variable as 'node' or "
            "'browse_path', not a register 'address'",
        )
    elif not isinstance(bus, OpcUaBus) and opcua:
        yield doc.issue(
            (*at, "address"), f"bus {bus.id!r} is {bus.type}: give the block's first register"
        )
    elif isinstance(bus, ModbusRtuBus):
        guarded = [
            t.name
            for d in config.devices
            if d.bus == bus.id
            for t in d.tags
            if (p := profiles.get(t.profile)) is not None and p.priority == "safety"
        ]
        outputs = [
            a.id
            for a in config.actuators
            if any(d.id == a.device and d.bus == bus.id for d in config.devices)
        ]
        if guarded or outputs:
            what = ", ".join((guarded + outputs)[:3])
            yield doc.issue(
                (*at, "tag"),
                f"RTU line {bus.id!r} carries safety-class tags or outputs ({what}); a "
                "waveform block would hold that line for seconds between their polls: put "
                "the vibration transmitter on a line of its own",
            )
