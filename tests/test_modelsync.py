"""Model delivery at the site: a real gateway process polls a bucket, refuses what is wrong with
the reason, swaps what is right between two batches, rolls back a failing model, and boots on
its cache without the network."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto, helper

from gateway.manifest import Manifest, default_bundle_dir, sha256_file
from gateway.modelstore import open_store
from gateway.signing import generate_keypair, load_private_key, sign_manifest
from gateway.telemetry import FEATURES, Fleet

from .conftest import Client, GatewayProc, flatten
from .ocistandin import StandIn, make_credentials

DEFAULT = Manifest.model_validate_json((default_bundle_dir() / "manifest.json").read_bytes())


# -- bundles -------------------------------------------------------------------------------------
def tiny_model(n_features: int, kind: str = "sum") -> bytes:
    """An ONNX model of one float32 input (N, n) and one score per row.

    ``sum``: 0.001 x the row's sum (finite for any reading). ``sqrt``: the square root of the
    first feature minus 1000: fine on golden samples above 1000, NaN on a real temperature.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    if kind == "sum":
        nodes = [
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
            helper.make_node("Mul", ["s", "k"], ["score"]),
        ]
        inits = [
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [0.001]),
        ]
    else:
        nodes = [
            helper.make_node("Gather", ["x", "col"], ["c"], axis=1),
            helper.make_node("Sub", ["c", "k"], ["d"]),
            helper.make_node("Sqrt", ["d"], ["score"]),
        ]
        inits = [
            helper.make_tensor("col", TensorProto.INT64, [], [0]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [1000.0]),
        ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class Repo:
    """A site's model folder (``file://``), written the way ``model publish`` writes it."""

    root: Path
    key: Any  # the Ed25519 private key data scientists sign with

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def bundle(
        self,
        version: str,
        *,
        model: bytes | None = None,
        features: tuple[str, ...] = FEATURES,
        golden: list[list[float]] | None = None,
        expected: list[float] | None = None,
        sign: bool = True,
        **manifest: Any,
    ) -> Path:
        """Upload version ``version`` (model.onnx then manifest.json; LATEST untouched)."""
        folder = self.root / version
        folder.mkdir(parents=True)
        if model is None:
            shutil.copy(default_bundle_dir() / "model.onnx", folder / "model.onnx")
            golden_in = DEFAULT.golden.inputs
        else:
            (folder / "model.onnx").write_bytes(model)
            golden_in = golden or [[1000.0 + i + j for j in range(len(features))] for i in range(4)]
        session = ort.InferenceSession(str(folder / "model.onnx"))
        name = session.get_inputs()[0].name
        if expected is None:  # what `model pack` records: the model's own outputs
            out = session.run(None, {name: np.asarray(golden_in, np.float32)})[0]
            expected = out.reshape(-1).tolist()
        body = DEFAULT.model_dump(mode="json", exclude={"signature"})
        body.update(
            version=version,
            model={
                "file": "model.onnx",
                "sha256": sha256_file(folder / "model.onnx"),
                "size": (folder / "model.onnx").stat().st_size,
            },
            io={"input": name, "score": session.get_outputs()[0].name},
            features=[{"name": f} for f in features],
            golden={"inputs": golden_in, "expected": expected, "abs_tol": 1e-4},
        )
        if model is not None:
            body["alert"] = {"threshold": 1e9, "clear_threshold": 1e8}
        body.update(manifest)
        m = Manifest.model_validate(body)
        if sign:
            m = sign_manifest(m, self.key)
        (folder / "manifest.json").write_bytes(m.to_json())
        return folder

    def promote(self, version: str) -> None:
        tmp = self.root / "LATEST.tmp"
        tmp.write_text(version + "\n")
        tmp.replace(self.root / "LATEST")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    private.parent.mkdir()
    generate_keypair(private, public)
    return private, public


@pytest.fixture
def repo(tmp_path: Path, keys: tuple[Path, Path]) -> Repo:
    root = tmp_path / "bucket" / "plant-a"
    root.mkdir(parents=True)
    return Repo(root, load_private_key(keys[0]))


class Site:
    """One gateway with a model source, and a client watching its model topic and scores."""

    def __init__(self, gw: GatewayProc, client: Client) -> None:
        self.gw, self.client = gw, client
        self.topic = f"gateway/{gw.id}/model"
        self.fleet = Fleet(4, seed=3)
        self.t = 1_795_000_000.0
        self.last_row: dict[str, float] = {}

    def report(self) -> dict[str, Any]:
        reports = self.client.on(self.topic)
        return reports[-1] if reports else {}

    def wait_event(self, event: str, version: str, timeout: float = 20.0) -> dict[str, Any]:
        def seen() -> bool:
            last = self.report().get("last_event") or {}
            return last.get("event") == event and last.get("version") == version

        self.client.wait_for(seen, timeout)
        return self.report()

    def score_one(self, **extra: float) -> dict[str, Any]:
        """Publish one healthy reading; return its score."""
        self.t += 1.0
        row = dict(zip(FEATURES, self.fleet.sample(self.t)[0].tolist(), strict=True))
        row.update(extra)
        self.last_row = row
        before = len(flatten(self.client.on(self.gw.scores)))
        self.client.publish(f"{self.gw.telemetry}/m0", {"ts": self.t, **row})
        self.client.wait_for(lambda: len(flatten(self.client.on(self.gw.scores))) > before)
        return flatten(self.client.on(self.gw.scores))[-1]


@pytest.fixture
def site_factory(
    gateway_factory: Callable[..., GatewayProc],
    client_factory: Callable[..., Client],
    keys: tuple[Path, Path],
) -> Iterator[Callable[..., Site]]:
    def make(source: str, **env: str) -> Site:
        gw = gateway_factory(
            start=False,
            EDGEGW_MODEL__SOURCE=source,
            EDGEGW_MODEL__PUBLIC_KEY=str(keys[1]),
            EDGEGW_MODEL__POLL_INTERVAL="1",
            EDGEGW_MODEL__POLL_JITTER="0",
            **env,
        )
        client = client_factory(f"gateway/{gw.id}/model", f"{gw.scores}/#")
        gw.start()
        return Site(gw, client)

    return make


# -- tests ---------------------------------------------------------------------------------------
def test_new_version_is_verified_swapped_in_and_attributed(repo: Repo, site_factory: Any) -> None:
    site = site_factory(repo.url)
    assert site.score_one()["model"] == "machine-health@1.0.0"  # the bundled default
    repo.bundle("2.0.0")
    repo.promote("2.0.0")
    report = site.wait_event("swapped", "2.0.0")
    assert report["model"] == "machine-health@2.0.0"
    assert report["signed_by"]
    assert report["cached"] == ["2.0.0"]
    assert report["last_event"]["detail"] == {
        "from": "machine-health@1.0.0",
        "to": "machine-health@2.0.0",
    }
    assert site.score_one()["model"] == "machine-health@2.0.0"
    assert site.gw.metric("gateway_model_swaps_total") == 1
    assert 'version="2.0.0"' in site.gw.metrics()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("sha256", "sha256 mismatch"),
        ("signature", "signature does not verify"),
        ("unsigned", "unsigned"),
        ("golden", "fails its golden samples"),
        ("inputs", "the manifest lists 4 features"),
        ("version", "published as"),
    ],
)
def test_a_bad_version_is_refused_with_its_reason_and_the_old_one_serves(
    repo: Repo, site_factory: Any, case: str, reason: str
) -> None:
    site = site_factory(repo.url)
    site.score_one()
    bad = "2.0.0"
    if case == "sha256":
        folder = repo.bundle(bad)
        with (folder / "model.onnx").open("r+b") as fh:  # one flipped byte after signing
            fh.seek(100)
            byte = fh.read(1)
            fh.seek(100)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif case == "signature":
        folder = repo.bundle(bad)
        m = orjson.loads((folder / "manifest.json").read_bytes())
        m["alert"]["threshold"] = 99.0  # changed after signing
        (folder / "manifest.json").write_bytes(orjson.dumps(m))
    elif case == "unsigned":
        repo.bundle(bad, sign=False)
    elif case == "golden":
        folder = repo.bundle(bad)
        m = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
        golden = m.golden.model_copy(update={"expected": [v + 1.0 for v in m.golden.expected]})
        signed = sign_manifest(m.model_copy(update={"golden": golden}), repo.key)
        (folder / "manifest.json").write_bytes(signed.to_json())
    elif case == "inputs":  # a five-feature model whose manifest lists four
        repo.bundle(
            bad,
            model=tiny_model(5),
            features=FEATURES[:4],
            golden=[[1.0, 2.0, 3.0, 4.0]] * 2,
            expected=[0.01, 0.01],
        )
    elif case == "version":  # a folder renamed after signing
        repo.bundle("2.0.1")
        (repo.root / "2.0.1").rename(repo.root / bad)
    repo.promote(bad)
    report = site.wait_event("rejected", bad)
    assert reason in report["last_event"]["reason"], report["last_event"]
    assert report["model"] == "machine-health@1.0.0"
    assert site.score_one()["model"] == "machine-health@1.0.0"
    assert site.gw.metric("gateway_model_rejected_total") == 1
    # Refused for good: later polls neither fetch it again nor report a swap.
    polls = site.gw.metric("gateway_model_polls_not_modified_total")
    site.client.wait_for(
        lambda: site.gw.metric("gateway_model_polls_not_modified_total") >= polls + 2
    )
    assert site.gw.metric("gateway_model_rejected_total") == 1
    assert site.report()["model"] == "machine-health@1.0.0"


def test_half_uploaded_or_missing_versions_change_nothing(repo: Repo, site_factory: Any) -> None:
    repo.bundle("2.0.0")
    repo.promote("2.0.0")
    site = site_factory(repo.url)
    site.wait_event("swapped", "2.0.0")
    cache = site.gw.workdir / "data" / "models"
    # Files of 3.0.0 are there, LATEST still says 2.0.0: nothing is fetched.
    repo.bundle("3.0.0")
    polls = site.gw.metric("gateway_model_polls_not_modified_total")
    site.client.wait_for(
        lambda: site.gw.metric("gateway_model_polls_not_modified_total") >= polls + 2
    )
    assert not (cache / "3.0.0").exists()
    assert not (cache / ".incoming" / "3.0.0").exists()
    assert site.report()["model"] == "machine-health@2.0.0"
    # LATEST names a version that is not there: reported, retried, the live model serves.
    repo.promote("4.0.0")
    report = site.wait_event("fetch_failed", "4.0.0")
    assert "missing" in report["last_event"]["reason"]
    assert site.score_one()["model"] == "machine-health@2.0.0"
    # Once it is uploaded after all, the next poll takes it (a missing version is not "bad").
    repo.bundle("4.0.0")
    site.wait_event("swapped", "4.0.0")


def test_a_model_needing_a_field_no_reading_carries_waits(repo: Repo, site_factory: Any) -> None:
    site = site_factory(repo.url)
    site.score_one()
    features = (*FEATURES[:4], "humidity")
    repo.bundle("2.0.0", model=tiny_model(5), features=features)
    repo.promote("2.0.0")
    report = site.wait_event("fetch_failed", "2.0.0")
    assert "'humidity'" in report["last_event"]["reason"]
    assert site.score_one()["model"] == "machine-health@1.0.0"
    # The new sensor comes online: the model follows, and ingest reads its features.
    for _ in range(70):  # one reading in 64 is sampled for its fields
        site.score_one(humidity=40.0)
    site.wait_event("swapped", "2.0.0")
    score = site.score_one(humidity=41.0)
    assert score["model"] == "machine-health@2.0.0"
    assert score["score"] == pytest.approx(0.001 * sum(site.last_row[f] for f in features))


def test_a_model_that_fails_live_is_rolled_back(repo: Repo, site_factory: Any) -> None:
    repo.bundle("2.0.0")
    repo.promote("2.0.0")
    site = site_factory(repo.url, EDGEGW_MODEL__ROLLBACK_WINDOW="10")
    site.wait_event("swapped", "2.0.0")
    repo.bundle("3.0.0", model=tiny_model(5, "sqrt"))  # passes golden, NaN on real readings
    repo.promote("3.0.0")
    site.wait_event("swapped", "3.0.0")
    scores = [site.score_one() for _ in range(12)]
    assert any(s["model"] == "machine-health@3.0.0" for s in scores)
    report = site.wait_event("rolled_back", "3.0.0")
    assert "NaN or infinite" in report["last_event"]["reason"]
    assert report["model"] == "machine-health@2.0.0"
    assert site.score_one()["model"] == "machine-health@2.0.0"
    assert site.gw.metric("gateway_model_rollbacks_total") == 1
    # LATEST still names 3.0.0, which stays refused.
    polls = site.gw.metric("gateway_model_polls_not_modified_total")
    site.client.wait_for(
        lambda: site.gw.metric("gateway_model_polls_not_modified_total") >= polls + 2
    )
    assert site.report()["model"] == "machine-health@2.0.0"


def test_shadow_stage_promotes_a_sane_candidate_and_refuses_an_insane_one(
    repo: Repo, site_factory: Any
) -> None:
    site = site_factory(
        repo.url, EDGEGW_MODEL__SHADOW_READINGS="20", EDGEGW_MODEL__SHADOW_SCORE_MAX="1"
    )
    site.score_one()
    repo.bundle("2.0.0")
    repo.promote("2.0.0")
    site.wait_event("shadow_started", "2.0.0")
    for _ in range(20):  # the live model scores all of them; the candidate only watches
        assert site.score_one()["model"] == "machine-health@1.0.0"
    report = site.wait_event("swapped", "2.0.0")
    shadow = report["last_event"]["detail"]["shadow"]
    assert shadow["readings"] >= 20
    assert shadow["nonfinite"] == 0
    assert shadow["candidate"]["mean"] == pytest.approx(shadow["live"]["mean"], rel=1e-3)
    # A candidate whose scores run far out of the configured bounds is refused.
    repo.bundle("3.0.0", model=tiny_model(5))  # 0.001 x the sum of a reading: about 1.5
    repo.promote("3.0.0")
    site.wait_event("shadow_started", "3.0.0")
    for _ in range(20):
        site.score_one()
    report = site.wait_event("shadow_rejected", "3.0.0")
    assert "outside" in report["last_event"]["reason"]
    assert report["last_event"]["detail"]["shadow"]["out_of_bounds"] >= 20
    assert site.score_one()["model"] == "machine-health@2.0.0"


def test_boots_on_the_last_good_cached_model_without_the_network(
    repo: Repo, site_factory: Any, gateway_factory: Callable[..., GatewayProc], keys: Any
) -> None:
    repo.bundle("2.0.0")
    repo.promote("2.0.0")
    site = site_factory(repo.url)
    site.wait_event("swapped", "2.0.0")
    assert site.gw.stop() == 0
    gone = repo.root.parent / "unreachable"  # the bucket is out of reach
    again = GatewayProc(site.gw.broker, site.gw.workdir, id=site.gw.id, env=dict(site.gw.env))
    again.env["EDGEGW_MODEL__SOURCE"] = gone.as_uri()
    again.start()
    try:
        _, health = again.health()
        assert health["model"] == "machine-health@2.0.0"
        assert "model from cache model=machine-health@2.0.0" in again.log
    finally:
        assert again.stop() == 0


def test_swap_under_load_drops_nothing_and_scores_each_reading_once(
    repo: Repo, site_factory: Any, client_factory: Callable[..., Client]
) -> None:
    site = site_factory(repo.url)
    gw = site.gw
    sub = client_factory(f"{gw.scores}/#")
    pub = client_factory()
    repo.bundle("2.0.0")
    rate, seconds, machines = 2_000, 4.0, 20
    fleet = Fleet(machines, seed=5)
    sent: list[tuple[str, float]] = []

    def load() -> None:
        start = time.monotonic()
        k = 0
        while (due := start + k / rate) < start + seconds:
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            ts = 1_795_000_000.0 + k * 0.001
            m = k % machines
            row = fleet.sample(ts)[m].tolist()
            machine = f"m{m}"
            pub.publish_async(
                f"{gw.telemetry}/{machine}", {"ts": ts, **dict(zip(FEATURES, row, strict=True))}
            )
            sent.append((machine, ts))
            k += 1

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(seconds / 2)
    repo.promote("2.0.0")  # the next poll (within a second) swaps while readings stream in
    loader.join()
    site.wait_event("swapped", "2.0.0")
    sub.wait_for(lambda: len(flatten(sub.on(gw.scores))) >= len(sent), timeout=60)
    time.sleep(0.5)
    scores = flatten(sub.on(gw.scores))
    got = [(s["machine"], s["ts"]) for s in scores]
    assert len(got) == len(set(got)) == len(sent), "each reading scored exactly once"
    assert set(got) == set(sent)
    versions = {s["model"] for s in scores}
    assert versions == {"machine-health@1.0.0", "machine-health@2.0.0"}
    for machine in {m for m, _ in sent}:  # per machine: old model, then new, never back
        mine = sorted((s["ts"], s["model"]) for s in scores if s["machine"] == machine)
        labels = [label for _, label in mine]
        first_new = labels.index("machine-health@2.0.0") if "machine-health@2.0.0" in labels else 0
        assert all(label == "machine-health@2.0.0" for label in labels[first_new:])


def test_oci_bucket_polls_cheaply_and_survives_network_errors(
    repo: Repo, site_factory: Any, tmp_path: Path
) -> None:
    creds = make_credentials(tmp_path / "oci")
    with StandIn(tmp_path / "cloud", public_keys={creds.key_id: creds.public_key_pem}) as cloud:
        url = "oci://standin/models-plant-a/edge"
        bucket = open_store(
            url, oci_config=creds.config_file, oci_profile=creds.profile, endpoint=cloud.endpoint
        )
        folder = repo.bundle("2.0.0")
        for name in ("model.onnx", "manifest.json"):  # what `model publish` uploads, LATEST last
            bucket.put("2.0.0", name, (folder / name).read_bytes())
        bucket.set_latest("2.0.0")
        # Object Storage requests fail at random (5xx) while the gateway first fetches; with
        # this seed the third request, the model file's GET, is the first to fail.
        cloud.faults.update(fail_fraction=0.5, fail_groups=("objectstorage",), seed=2)
        site = site_factory(
            url,
            EDGEGW_MODEL__ENDPOINT=cloud.endpoint,
            EDGEGW_UPLINK__OCI_CONFIG=str(creds.config_file),
            EDGEGW_UPLINK__OCI_PROFILE=creds.profile,
        )
        site.client.wait_for(
            lambda: any(
                (e := r.get("last_event") or {}).get("event") == "fetch_failed"
                and e.get("version") == "2.0.0"
                for r in site.client.on(site.topic)
            )
        )
        cloud.faults.clear()
        site.wait_event("swapped", "2.0.0")
        assert site.score_one()["model"] == "machine-health@2.0.0"
        gets = [(unquote(r.target), r.status) for r in cloud.request_log("GetObject")]
        assert any(t.endswith("/2.0.0/model.onnx") and status >= 500 for t, status in gets)
        # Idle polls: one conditional GET of LATEST each, answered 304 with no body.
        cloud.clear_request_log()
        polls = site.gw.metric("gateway_model_polls_not_modified_total")
        site.client.wait_for(
            lambda: site.gw.metric("gateway_model_polls_not_modified_total") >= polls + 3
        )
        idle = cloud.request_log()
        assert idle, "the gateway polled"
        assert {r.operation for r in idle} == {"GetObject"}
        assert all(unquote(r.target).endswith("/edge/LATEST") for r in idle)
        assert all(r.status == 304 and r.sent == 0 and "if-none-match" in r.headers for r in idle)


def test_an_unreadable_public_key_stops_start_up_naming_the_key(
    gateway_factory: Callable[..., GatewayProc], repo: Repo, tmp_path: Path
) -> None:
    gw = gateway_factory(
        start=False,
        EDGEGW_MODEL__SOURCE=repo.url,
        EDGEGW_MODEL__PUBLIC_KEY=str(tmp_path / "missing.pub"),
    )
    gw.start(wait=False)
    assert gw.proc is not None
    assert gw.proc.wait(30) == 2
    assert "model.public_key [EDGEGW_MODEL__PUBLIC_KEY]: cannot read public key" in gw.log


def test_a_candidate_in_shadow_is_dropped_when_latest_moves_away(
    repo: Repo, site_factory: Any
) -> None:
    site = site_factory(repo.url, EDGEGW_MODEL__SHADOW_READINGS="5")
    site.score_one()
    repo.bundle("2.0.0")
    repo.promote("2.0.0")
    site.wait_event("shadow_started", "2.0.0")
    repo.promote("9.9.9")  # withdrawn: LATEST now names a version that is not there yet
    site.client.wait_for(
        lambda: any(
            (e := r.get("last_event") or {}).get("event") == "shadow_rejected"
            and e.get("version") == "2.0.0"
            and "superseded" in e.get("reason", "")
            for r in site.client.on(site.topic)
        )
    )
    for _ in range(10):  # more than the shadow stage needed: the withdrawn candidate stays out
        assert site.score_one()["model"] == "machine-health@1.0.0"
    assert site.report()["shadow"] is None
    # It never served, so the cache does not keep it (nothing else would ever remove it).
    assert not (site.gw.workdir / "data" / "models" / "2.0.0").exists()
