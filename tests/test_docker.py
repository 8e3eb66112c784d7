"""The Docker files against the package, without a Docker engine (none runs here).

Parses the Dockerfile, .dockerignore, compose.yaml and .ci/run, and checks that the image's entry command,
healthcheck, copied paths, install step, data volume and port agree with pyproject.toml, the app's routes
and settings, and what CI installs. What needs an engine (the build, the GPU, the container's health) is
listed in README.md, "Docker (GPU)".
"""

import fnmatch
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import uvicorn
from starlette.routing import Match

from app.main import create_app
from app.settings import Settings
from tests.utils.server import app_settings, live_server
from tests.utils.waiting import PATIENCE_S

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
CI = ROOT / ".ci" / "run"

# what the image must contain for `layersync serve` to work from an editable install
REQUIRED_SOURCES = {"app", "trainer", "templates", "static", "pyproject.toml", "README.md"}


# --- parsing -----------------------------------------------------------------------------------------------------


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped (also inside a continuation, as Docker
    does), lines ending in a backslash joined to the next."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def command_words(arguments: str) -> list[str]:
    """Exec form (a JSON list) or shell form (split as a shell would)."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def parse_env(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if len(words) >= 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def pip_install_words(command: str) -> list[str]:
    """The words after the first `pip install` of a shell command, up to the end of that step."""
    words = shlex.split(command, comments=True)
    for index in range(len(words) - 1):
        if words[index].endswith("pip") and words[index + 1] == "install":
            rest = words[index + 2 :]
            ends = [at for at, word in enumerate(rest) if word in ("&&", "||", ";", "|") or word.endswith(";")]
            return rest[: ends[0]] if ends else rest
    raise AssertionError(f"no `pip install` in {command!r}")


def package_specs(words: list[str]) -> tuple[set[str], set[str]]:
    """(requirements, editable targets) of pip install's arguments: options and their values skipped."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f"}
    requirements, editable = set(), set()
    words = iter(words)
    for word in words:
        if word in ("-e", "--editable"):
            editable.add(next(words))
        elif word in takes_value:
            next(words)
        elif not word.startswith("-"):
            requirements.add(word)
    return requirements, editable


def is_torch_pin(spec: str) -> bool:
    return re.match(r"torch\s*(==|>=|<=|~=|>|<|@)", spec) is not None or spec == "torch"


class Image:
    """What the tests need from the Dockerfile."""

    def __init__(self, text: str):
        self.instructions = parse_dockerfile(text)
        self.env: dict[str, str] = {}
        self.copies: list[tuple[list[str], str, str]] = []  # (sources, destination, workdir at that point)
        workdir = "/"
        for keyword, arguments in self.instructions:
            if keyword == "ENV":
                self.env.update(parse_env(arguments))
            elif keyword == "WORKDIR":
                workdir = str(PurePosixPath(workdir) / arguments)
            elif keyword in ("COPY", "ADD"):
                words = [word for word in command_words(arguments) if not word.startswith("--")]
                self.copies.append((words[:-1], words[-1], workdir))

    def all(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
        return found[0]

    def index_of(self, predicate) -> int:
        return next(
            index for index, (keyword, arguments) in enumerate(self.instructions) if predicate(keyword, arguments)
        )

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD, an init (tini, dumb-init) and its `--` left out."""
        words = command_words(self.one("CMD"))
        if self.all("ENTRYPOINT"):
            words = command_words(self.one("ENTRYPOINT")) + words
        if words and PurePosixPath(words[0]).name in ("tini", "dumb-init"):
            words = words[1:]
            if words and words[0] == "--":
                words = words[1:]
        return words

    def exposed_port(self) -> int:
        return int(self.one("EXPOSE").split("/")[0])

    def healthcheck(self) -> list[str]:
        arguments = self.one("HEALTHCHECK")
        words = shlex.split(arguments[: arguments.index("CMD")])
        assert all(word.startswith("--") for word in words), f"unexpected HEALTHCHECK options {words}"
        return command_words(arguments[arguments.index("CMD") + len("CMD") :].strip())

    def destination(self, source: str) -> PurePosixPath:
        """Where a COPY puts a repository path in the image."""
        for sources, destination, workdir in self.copies:
            if source in (s.rstrip("/") for s in sources):
                target = PurePosixPath(workdir) / destination
                # several sources, or a destination ending in /: the source goes inside it
                if len(sources) > 1 or destination.endswith("/") or destination == ".":
                    target = target / PurePosixPath(source).name
                return target
        raise AssertionError(f"{source} is not copied into the image")


def option(words: list[str], name: str) -> str | None:
    for index, word in enumerate(words):
        if word == name and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def is_get_route(tmp_path: Path, path: str) -> bool:
    """Whether the app routes ``GET path`` to an endpoint (asked of its routes as its router asks them)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in create_app(Settings(data_dir=tmp_path)).routes)


@pytest.fixture(scope="module")
def image() -> Image:
    return Image(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the parser itself -------------------------------------------------------------------------------------------


def test_parser_joins_continuations_and_drops_comments():
    parsed = parse_dockerfile('FROM x\n# c\nRUN a \\\n  # inside\n  && b\nCMD ["p", "q"]\n')
    assert parsed == [("FROM", "x"), ("RUN", "a && b"), ("CMD", '["p", "q"]')]
    assert Image('FROM x\nENTRYPOINT ["/usr/bin/tini", "--"]\nCMD ["layersync", "serve"]\n').command() == [
        "layersync",
        "serve",
    ]


# --- Dockerfile --------------------------------------------------------------------------------------------------


def test_base_image_is_a_pinned_cuda_pytorch_that_satisfies_pyproject(image, pyproject):
    base = image.all("FROM")[-1].split()[0]
    match = re.fullmatch(r"pytorch/pytorch:(\d+)\.(\d+)\.(\d+)-cuda[\d.]+-cudnn\d+-(runtime|devel)", base)
    assert match, f"{base}: expected a pinned CUDA tag of pytorch/pytorch, not latest or a CPU image"
    floor = next(dep for dep in pyproject["project"]["dependencies"] if dep.startswith("torch"))
    minimum = tuple(int(part) for part in re.search(r">=\s*([\d.]+)", floor).group(1).split("."))
    assert tuple(int(part) for part in match.groups()[:3]) >= minimum + (0,) * (3 - len(minimum))


def test_entry_command_is_the_console_script_serving_on_all_interfaces_at_the_exposed_port(image, pyproject):
    words = image.command()
    scripts = pyproject["project"]["scripts"]
    assert words[0] in scripts, f"{words[0]} is not a console script of pyproject.toml ({sorted(scripts)})"
    assert words[1] == "serve"
    assert option(words, "--host") == "0.0.0.0"
    assert int(option(words, "--port") or 8000) == image.exposed_port()
    # the entry point it names exists
    module, _, function = scripts[words[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_entry_command_parses_and_binds_what_the_dockerfile_says(image, pyproject, tmp_path, monkeypatch):
    """Runs the console script's main with the image's arguments up to the point uvicorn would start."""
    words = image.command()
    module, _, function = pyproject["project"]["scripts"][words[0]].partition(":")
    bound = {}

    def run(server, *args, **kwargs):  # instead of serving: note the address, and start as uvicorn would
        bound.update(host=server.config.host, port=server.config.port)
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setenv("LAYERSYNC_DATA_DIR", str(tmp_path))
    assert getattr(importlib.import_module(module), function)(words[1:]) in (0, None)
    assert bound == {"host": "0.0.0.0", "port": image.exposed_port()}


def test_data_dir_is_the_volume_and_a_setting(image, tmp_path, monkeypatch):
    data_dir = image.env.get("LAYERSYNC_DATA_DIR")
    assert data_dir, "the image must set LAYERSYNC_DATA_DIR"
    volumes = [volume for arguments in image.all("VOLUME") for volume in command_words(arguments)]
    assert data_dir in volumes
    monkeypatch.setenv("LAYERSYNC_DATA_DIR", data_dir)  # the setting the server really reads
    assert Settings().data_dir == Path(data_dir)


def test_runs_as_a_non_root_user(image):
    users = image.all("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_healthcheck_gets_the_health_route_on_the_exposed_port(image, tmp_path):
    words = image.healthcheck()
    url = next(word for word in words if word.startswith("http"))
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost")
    assert parts.port == image.exposed_port()
    assert is_get_route(tmp_path, parts.path), f"GET {parts.path} is not a route of the app"
    assert not is_get_route(tmp_path, "/api/no-such-route")  # the check above can fail
    assert parts.path == "/api/health"


def test_healthcheck_script_is_copied_and_tells_up_from_down(image, tmp_path):
    words = image.healthcheck()
    script = next(PurePosixPath(word) for word in words if word.endswith(".py"))
    # the script in the image is the repository's file at the path COPY puts it
    source = next(
        str(PurePosixPath(s) / script.relative_to(image.destination(s)))
        for sources, _, _ in image.copies
        for s in sources
        if script.is_relative_to(image.destination(s))
    )
    local = ROOT / source
    assert local.is_file()
    path = urlsplit(next(word for word in words if word.startswith("http"))).path

    def probe(url: str, token: str | None = None) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if key != "LAYERSYNC_TOKEN"}
        env.update({"LAYERSYNC_TOKEN": token} if token else {})
        return subprocess.run([sys.executable, str(local), url], env=env, check=False, capture_output=True, timeout=PATIENCE_S)

    with live_server(app_settings(tmp_path / "data")) as base:
        up, missing = probe(base + path), probe(base + "/api/no-such-route")
    down = probe(base + path)  # the server has stopped
    assert up.returncode == 0, up.stderr
    assert missing.returncode == 1 and down.returncode == 1
    # with LAYERSYNC_TOKEN set (compose sets it) the probe sends it: it passes even where a route is guarded
    with live_server(app_settings(tmp_path / "guarded", token="s3cret-token")) as base:
        assert probe(base + path, token="s3cret-token").returncode == 0
        assert probe(base + "/api/runs", token="s3cret-token").returncode == 0
        assert probe(base + "/api/runs").returncode == 1  # the guard is on: the line above proves the header


def test_copied_paths_exist_and_keep_templates_and_static_next_to_the_app(image):
    sources = {s.rstrip("/") for sources, _, _ in image.copies for s in sources}
    assert REQUIRED_SOURCES <= sources, f"not copied: {REQUIRED_SOURCES - sources}"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    # app/routes/pages.py finds templates/ and static/ at the parent of app/, as in this repository ...
    from app.routes import pages

    assert pages.TEMPLATES_DIR == ROOT / "templates" and pages.STATIC_DIR == ROOT / "static"
    # ... so the image must put them beside app/
    root = image.destination("app").parent
    for name in ("templates", "static", "trainer", "pyproject.toml"):
        assert image.destination(name) == root / name


def test_dockerignore_keeps_what_is_copied_and_drops_local_state(image):
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, pattern.rstrip("/")) or fnmatch.fnmatch(path, "**/" + pattern) for pattern in patterns
        )

    for sources, _, _ in image.copies:
        for source in sources:
            assert not ignored(source.rstrip("/")), f".dockerignore drops {source}, which the Dockerfile copies"
    for path in (".venv", ".git", "layersync-data", "layersync-runs", ".whl", "x.whl", "layersync_studio.egg-info"):
        assert ignored(path), f".dockerignore should exclude {path}"


def test_install_step_is_ci_s_minus_the_cpu_torch(image):
    ci_words = pip_install_words(CI.read_text())
    ci_requirements, ci_editable = package_specs(ci_words)
    assert any(is_torch_pin(spec) for spec in ci_requirements), "CI pins its CPU torch: expected a torch== in .ci/run"

    runs = [arguments for arguments in image.all("RUN") if re.search(r"pip install", arguments)]
    assert len(runs) == 1, "one pip install step"
    words = pip_install_words(runs[0])
    requirements, editable = package_specs(words)
    assert not any(is_torch_pin(spec) for spec in requirements), "the image must keep the base image's CUDA torch"
    assert "torch==" not in " ".join(words)
    assert requirements == {spec for spec in ci_requirements if not is_torch_pin(spec)}
    assert editable == ci_editable and editable, (
        "installed editable, as CI does (templates/ and static/ stay in the tree)"
    )
    # the base image's torch is held by a constraint, so pip fails rather than replace it
    constraint = option(words, "-c") or option(words, "--constraint")
    assert constraint and re.search(rf"torch==.*>\s*{re.escape(constraint)}", runs[0]), (
        "torch pinned to the installed version"
    )


def test_install_runs_after_the_package_is_copied(image):
    install = image.index_of(lambda keyword, arguments: keyword == "RUN" and "pip install" in arguments)
    for source in REQUIRED_SOURCES:
        copy = image.index_of(
            lambda keyword, arguments, s=source: keyword == "COPY" and s in command_words(arguments)[:-1]
        )
        assert copy < install, f"{source} is copied after the editable install"


# --- compose.yaml ------------------------------------------------------------------------------------------------


def load_compose() -> dict | None:
    try:
        import yaml  # a dependency of huggingface_hub, which diffusers requires
    except ImportError:
        return None
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_reserves_the_gpus_maps_the_port_and_mounts_the_volume(image):
    port, data_dir = image.exposed_port(), image.env["LAYERSYNC_DATA_DIR"]
    compose = load_compose()
    if compose is None:  # no PyYAML: a structural check of the text
        text = COMPOSE.read_text()
        for needed in (
            "driver: nvidia",
            "count: all",
            "capabilities: [gpu]",
            f':{port}"',
            f":{data_dir}\n",
            "LAYERSYNC_TOKEN: ${LAYERSYNC_TOKEN",
            "restart:",
        ):
            assert needed in text, f"compose.yaml lacks {needed!r}"
        return
    (service,) = compose["services"].values()
    assert (ROOT / service["build"] / "Dockerfile").resolve() == DOCKERFILE.resolve()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == "all" and "gpu" in d["capabilities"] for d in devices)
    assert any(str(mapping).rsplit(":", 1)[-1].split("/")[0] == str(port) for mapping in service["ports"])
    mounts = [volume.split(":") for volume in service["volumes"]]
    assert any(target == data_dir for _, target, *_ in mounts), f"nothing mounted at {data_dir}"
    named = [name for name, target, *_ in mounts if target == data_dir and not name.startswith((".", "/", "~"))]
    assert all(name in (compose.get("volumes") or {}) for name in named), "a named volume must be declared"
    assert service["environment"]["LAYERSYNC_TOKEN"].startswith("${LAYERSYNC_TOKEN")
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
