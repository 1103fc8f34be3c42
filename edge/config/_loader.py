"""Load YAML into frozen models, keeping file and line for every error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from edge.config._models import LoadedSite, SensorProfile, SiteConfig

PACKAGED_PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs" / "sensors"

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
        return f"{where}:{dev} {self.field}: {self.message}"


class ConfigError(Exception):
    """A configuration file was rejected; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def _plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dicts/lists for pydantic."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


class _Document:
    """A parsed YAML document that can say which line a field path is on."""

    def __init__(self, path: Path) -> None:
        self.file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                [ConfigIssue(self.file, None, None, "(file)", f"cannot read: {exc.strerror}")]
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [ConfigIssue(self.file, None, None, "(file)", f"not UTF-8 text: {exc.reason}")]
            ) from exc
        try:
            self.root = YAML(typ="rt").load(text)
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
        if not isinstance(self.root, CommentedMap):
            raise ConfigError(
                [ConfigIssue(self.file, 1, None, "(document)", "expected a mapping at the top")]
            )

    def line_of(self, loc: Loc) -> int | None:
        node: Any = self.root
        line: int | None = 1
        for part in loc:
            if isinstance(node, CommentedMap) and isinstance(part, str) and part in node:
                line = node.lc.data[part][0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedMap) and isinstance(part, str):
                # a missing field, or a pydantic union tag: stay on the parent
                continue
            else:
                break
        return line

    def device_of(self, loc: Loc) -> str | None:
        if len(loc) >= 2 and loc[0] in ("devices", "actuators") and isinstance(loc[1], int):
            seq = self.root.get(loc[0])
            if isinstance(seq, CommentedSeq) and loc[1] < len(seq):
                item = seq[loc[1]]
                if isinstance(item, CommentedMap):
                    key = "id" if loc[0] == "devices" else "device"
                    value = item.get(key)
                    return str(value) if value is not None else None
        return None

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        field = ".".join(str(p) for p in loc) or "(document)"
        return ConfigIssue(self.file, self.line_of(loc), self.device_of(loc), field, message)

    def validate(self, model: type[M]) -> M:
        try:
            return model.model_validate(_plain(self.root))
        except ValidationError as exc:
            raise ConfigError(
                [self.issue(_clean_loc(e["loc"]), e["msg"]) for e in exc.errors()]
            ) from exc


def _clean_loc(loc: Iterable[str | int]) -> Loc:
    # drop pydantic's discriminator tags (e.g. 'modbus_tcp') that are not YAML keys
    return tuple(p for p in loc if p not in ("modbus_tcp",))


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


def _cross_check(
    doc: _Document, config: SiteConfig, profiles: Mapping[str, SensorProfile]
) -> Iterable[ConfigIssue]:
    yield from _duplicates(doc, "buses", [b.id for b in config.buses])
    yield from _duplicates(doc, "devices", [d.id for d in config.devices])
    yield from _duplicates(doc, "actuators", [a.id for a in config.actuators])
    buses = {b.id for b in config.buses}
    devices = {d.id for d in config.devices}
    actuators = {a.id for a in config.actuators}
    tag_names: dict[str, str] = {}
    endpoints: dict[tuple[str, int], str] = {}

    for di, device in enumerate(config.devices):
        if device.bus not in buses:
            yield doc.issue(("devices", di, "bus"), f"unknown bus {device.bus!r}")
        key = (device.bus, device.unit_id)
        if key in endpoints:
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
            elif tag.thresholds is None and profile.thresholds_for(tag.location.position) is None:
                yield doc.issue(
                    (*at, "location", "position"),
                    f"profile {profile.id!r} has no thresholds for position "
                    f"{tag.location.position!r}; known: {', '.join(sorted(profile.thresholds))}"
                    " (or give the tag its own 'thresholds')",
                )
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

    coils: dict[tuple[str, int], str] = {}
    for ai, act in enumerate(config.actuators):
        if act.device not in devices:
            yield doc.issue(("actuators", ai, "device"), f"unknown device {act.device!r}")
        if (act.device, act.coil) in coils:
            yield doc.issue(
                ("actuators", ai, "coil"),
                f"coil {act.coil} of {act.device!r} is already actuator "
                f"{coils[(act.device, act.coil)]!r}",
            )
        coils[(act.device, act.coil)] = act.id
