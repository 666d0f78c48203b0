"""Routes render to a config real Nginx accepts, whatever the model names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.naming import upstream_name
from supervisor.routing import (
    EndpointRoutes,
    EntityRoute,
    ModelRoutes,
    VersionRoute,
    quote,
    render_routes,
    routable,
)
from supervisor.settings import REPO_ROOT

TEMPLATES = REPO_ROOT / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

HOSTILE = [
    'a"; return 200 "pwned',
    "x} server { listen 9999; }",
    "$host",
    "semi;colon",
    "brace{}",
    "../../etc/passwd",
    "名字 with spaces",
    "%2F%2e%2e",
    "back\\slash",
    "'single' \"double\"",
    "~regex.*",
    "n" * 300,
]


def ready(name: str, port: int = 9000) -> ModelRoutes:
    return ModelRoutes(name, (VersionRoute("1", "ready", f"127.0.0.1:{port}"),), (("Production", "1"),),
                       (("champion", "1"),))


def nginx_accepts(text: str, tmp_path: Path) -> None:
    (tmp_path / "routes.conf").write_text(text)
    (tmp_path / "t.conf").write_text(
        "events {}\nhttp {\n map_hash_bucket_size 1024;\n include routes.conf;\n"
        " server { listen 127.0.0.1:1; location / { return 200 $ms_target; } }\n}\n")
    r = subprocess.run([NGINX, "-t", "-q", "-p", f"{tmp_path}/", "-c", str(tmp_path / "t.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_quote_escapes_backslash_and_quote() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'


def test_ready_pending_stage_alias_entries(tmp_path: Path) -> None:
    m = ModelRoutes("iris", (VersionRoute("1", "ready", "unix:/run/ms/iris/1.sock"), VersionRoute("2", "pending", None)),
                    (("Production", "1"), ("Staging", "2")), (("champion", "1"),))
    text = render_routes([m], TEMPLATES).text
    assert '"/model/iris/1/invocations" "ms_' in text
    assert '"/model/iris/2/invocations" "pending"' in text
    assert '"/model/iris/Staging/invocations" "pending"' in text
    assert '"/model/iris/@champion/invocations" "ms_' in text
    # The V2 paths of each segment: the same target, and the version they resolve to.
    for path in ("/v2/models/iris/versions/Production/infer", "/v2/models/iris/versions/@champion",
                 "/v2/models/iris/versions/1/ready"):
        assert f'"{path}" "{upstream_name("iris", "1")}";' in text and f'"{path}" "1";' in text
    assert '"/v2/models/iris/versions/Staging/infer" "pending";' in text
    assert '"/v2/models/iris/versions/Staging/infer" "2";' in text
    assert "server unix:/run/ms/iris/1.sock max_fails=0;" in text
    nginx_accepts(text, tmp_path)


def test_empty_table_is_a_valid_config(tmp_path: Path) -> None:
    nginx_accepts(render_routes([], TEMPLATES).text, tmp_path)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_data(name: str, tmp_path: Path) -> None:
    rendered = render_routes([ready(name), ready("victim", 9002)], TEMPLATES)
    assert rendered.rejected == []
    nginx_accepts(rendered.text, tmp_path)
    # Outside the quoted keys, the text is exactly what a harmless name would give.
    harmless = render_routes([ready("NAME"), ready("victim", 9002)], TEMPLATES).text
    lines = [ln for ln in rendered.text.splitlines() if not ln.strip().startswith('"')]
    assert len(lines) == len([ln for ln in harmless.splitlines() if not ln.strip().startswith('"')])
    assert not any("listen" in ln or "return" in ln for ln in lines)


@pytest.mark.parametrize("name", ["new\nline", "tab\there", "nul\x00", "del\x7f", ""])
def test_names_with_control_characters_are_refused(name: str, tmp_path: Path) -> None:
    assert not routable(name)
    rendered = render_routes([ready(name), ready("ok")], TEMPLATES)
    assert rendered.rejected == [name]
    assert "ok/1" in rendered.text
    nginx_accepts(rendered.text, tmp_path)


def test_names_differing_only_in_case_keep_one_route(tmp_path: Path) -> None:
    rendered = render_routes([ready("Iris"), ready("iris", 9003)], TEMPLATES)
    assert rendered.rejected == ["iris"]
    nginx_accepts(rendered.text, tmp_path)


def test_endpoints_route_to_the_versions_upstreams_with_a_per_request_split(tmp_path: Path) -> None:
    m = ModelRoutes("iris", (VersionRoute("1", "ready", "unix:/run/1.sock"), VersionRoute("2", "ready", "unix:/r/2")),
                    legacy=False)
    split = EndpointRoutes("ep", (EntityRoute("a", ("iris", "1"), 80), EntityRoute("b", ("iris", "2"), 20)))
    single = EndpointRoutes("one", (EntityRoute("only", ("iris", "1"), 100), EntityRoute("off", None, 0)))
    text = render_routes([m], TEMPLATES, [split, single, EndpointRoutes("new", (), pending=True)]).text
    assert "/model/iris" not in text  # legacy serving is off for iris: upstreams only
    assert text.count("server unix:") == 2
    assert 'split_clients "${request_id}" $ms_split_' in text and "80% " in text and "* " in text
    assert '"/serving-endpoints/ep/invocations" $ms_split_' in text
    assert '"/serving-endpoints/ep/served-models/b/invocations" "e_' in text
    assert '"/serving-endpoints/new/invocations" "pending"' in text
    up1 = upstream_name("iris", "1")
    # The endpoint's entity shares version 1's upstream; a 0 % entity is reachable directly only.
    assert text.count(f'"{up1}"') == 2
    # Two direct entity paths and the endpoint's own, in the choice map and in the name map.
    assert text.count('"/serving-endpoints/one/') == 2 * (2 + 1)
    assert '"off";' in text and '"pending";' in text
    nginx_accepts(text, tmp_path)


def test_a_version_with_replicas_gets_one_server_each(tmp_path: Path) -> None:
    m = ModelRoutes("iris", (VersionRoute("1", "ready", "10.0.0.2:20001 10.0.0.3:20001"),))
    text = render_routes([m], TEMPLATES).text
    assert "server 10.0.0.2:20001 max_fails=0;" in text and "server 10.0.0.3:20001 max_fails=0;" in text
    nginx_accepts(text, tmp_path)
