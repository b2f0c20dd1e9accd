"""Dataset references: one spelling, parsed and validated; each kind fetched for real (a git
repository with a DVC remote on the loopback S3, an S3 prefix, a local folder, the generator)
into a folder written atomically, with a record of what was fetched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reid_core.config import ConfigError, load_config
from reid_core.data.synth import SynthSpec, generate
from reid_core.serving.s3_repository import s3_client
from reid_core.sources import (
    NO_DATASET,
    DvcReference,
    FetchError,
    LocalReference,
    S3Reference,
    SynthReference,
    fetch_dataset,
    parse_reference,
    read_record,
)

SMALL = {"num_ids": 8, "num_cams": 2, "images_per_id": 4, "height": 32, "width": 16}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("synth:day", SynthReference("day", 0)),
        ("synth:dusk?seed=3", SynthReference("dusk", 3)),
        (
            "dvc:https://example.org/org/data.git?path=market1501&rev=v2",
            DvcReference("https://example.org/org/data.git", "market1501", "v2"),
        ),
        ("dvc:/srv/git/data?path=sets/duke/", DvcReference("/srv/git/data", "sets/duke", "")),
        ("s3://bucket/datasets/market/", S3Reference("s3://bucket/datasets/market")),
        ("s3://http://127.0.0.1:9000/b/m", S3Reference("s3://http://127.0.0.1:9000/b/m")),
        ("data/market1501", LocalReference(Path("data/market1501"))),
        ("file:///mnt/market", LocalReference(Path("/mnt/market"))),
    ],
)
def test_each_spelling_parses_to_its_kind_and_round_trips(text, expected):
    parsed = parse_reference(text)
    assert parsed == expected
    assert parse_reference(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty dataset reference"),
        ("gs://bucket/market", "unknown dataset reference scheme"),
        ("http:data", "unknown dataset reference scheme"),
        ("synth:night", "synthetic style must be one of"),
        ("synth:day?seed=x", "seed must be a non-negative integer"),
        ("synth:day?size=3", "unknown option 'size'"),
        ("dvc:?path=x", "name the git repository"),
        ("dvc:/srv/git/data", "with ?path=PATH"),
        ("dvc:/srv/git/data?path=../secrets", "must stay inside the repository"),
        ("dvc:/srv/git/data?path=a&path=b", "given 2 times"),
        ("s3://bucket", "name a folder under the bucket"),
        ("s3://Bad_Bucket!/x", "is not an S3 repository location"),
    ],
)
def test_a_bad_reference_is_refused_with_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_reference(text)


def test_synthetic_reference_generates_the_dataset_its_style_and_seed_name(tmp_path):
    reference = parse_reference("synth:dusk?seed=5")
    record = fetch_dataset(reference, tmp_path / "d", synth_options=SMALL)
    generate(tmp_path / "direct", SynthSpec(**SMALL, style="dusk", seed=5))
    direct = fetch_dataset(LocalReference(tmp_path / "direct"), tmp_path / "copy")
    assert record.kind == "synth" and record.reference == "synth:dusk?seed=5"
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755  # readable by others, as a dataset
    assert record.content_sha256 == direct.content_sha256
    assert record.files == direct.files > 0


def test_local_folder_is_copied_and_a_link_out_of_it_is_refused(tmp_path):
    source = tmp_path / "market"
    (source / "bounding_box_train").mkdir(parents=True)
    (source / "bounding_box_train" / "0001_c1s1_000001_00.jpg").write_bytes(b"jpeg")
    record = fetch_dataset(LocalReference(source), tmp_path / "out")
    assert (tmp_path / "out" / "bounding_box_train" / "0001_c1s1_000001_00.jpg").read_bytes()
    assert (record.kind, record.files, record.bytes) == ("local", 1, 4)

    (tmp_path / "secret.txt").write_text("not part of the dataset")
    (source / "bounding_box_train" / "0002_c1s1_000001_00.jpg").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(FetchError, match="links outside the folder"):
        fetch_dataset(LocalReference(source), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_missing_or_empty_local_folder_fails_and_writes_nothing(tmp_path):
    with pytest.raises(FetchError, match="does not exist"):
        fetch_dataset(LocalReference(tmp_path / "nothing"), tmp_path / "out")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FetchError, match="is empty"):
        fetch_dataset(LocalReference(tmp_path / "empty"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_failed_fetch_keeps_the_previous_dataset(tmp_path):
    fetch_dataset(SynthReference("day", 0), tmp_path / "d", synth_options=SMALL)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*"))
    with pytest.raises(FetchError):
        fetch_dataset(LocalReference(tmp_path / "nothing"), tmp_path / "d")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*")) == before


def test_an_empty_target_means_no_dataset_and_an_empty_source_is_refused(tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text("datasets: {target: ' '}\n")
    datasets = load_config([config]).datasets
    assert datasets.target == "" and datasets.reference("target") is None
    assert isinstance(datasets.reference("source"), SynthReference)
    config.write_text("datasets: {source: ''}\n")
    with pytest.raises(ConfigError, match="datasets.source.*empty dataset reference"):
        load_config([config])


def test_no_dataset_is_fetched_as_a_folder_holding_only_its_record(tmp_path):
    record = fetch_dataset(None, tmp_path / "target")
    assert [p.name for p in (tmp_path / "target").iterdir()] == [".fetch.json"]
    assert read_record(tmp_path / "target") == record
    assert (record.kind, record.files, record.reference) == (NO_DATASET, 0, "")
    assert record.lineage_tags("target") == {
        "reid.dataset.target.kind": "none",
        "reid.dataset.target.files": "0",
    }


# ---- S3 ------------------------------------------------------------------------------------------


def _upload(client, bucket: str, prefix: str, folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_s3_prefix_is_downloaded_with_each_objects_etag(tmp_path, s3_endpoint, s3_bucket):
    generate(tmp_path / "synth", SynthSpec(**SMALL))
    client = s3_client(s3_endpoint)
    _upload(client, s3_bucket, "datasets/market", tmp_path / "synth")
    client.put_object(Bucket=s3_bucket, Key="datasets/marketplace/other.jpg", Body=b"x")

    reference = parse_reference(f"s3://{s3_endpoint}/{s3_bucket}/datasets/market")
    record = fetch_dataset(reference, tmp_path / "out")

    local = fetch_dataset(LocalReference(tmp_path / "synth"), tmp_path / "local")
    assert record.content_sha256 == local.content_sha256  # the same bytes, no neighbour prefix
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="datasets/market/")["Contents"]
    assert record.etags == {
        item["Key"].removeprefix("datasets/market/"): item["ETag"].strip('"') for item in listed
    }
    tags = record.lineage_tags("source")
    assert tags["reid.dataset.source.kind"] == "s3"
    assert len(tags["reid.dataset.source.etags_sha256"]) == 64


def test_s3_errors_name_the_reference_and_write_nothing(
    tmp_path, s3_endpoint, s3_bucket, monkeypatch
):
    empty = parse_reference(f"s3://{s3_endpoint}/{s3_bucket}/nothing/here")
    with pytest.raises(FetchError, match="is empty: no objects under the prefix"):
        fetch_dataset(empty, tmp_path / "out")
    missing = parse_reference(f"s3://{s3_endpoint}/no-such-bucket-{os.getpid()}/x")
    with pytest.raises(FetchError, match=r"S3 refused the request \(NoSuchBucket\)"):
        fetch_dataset(missing, tmp_path / "out")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setattr("boto3.DEFAULT_SESSION", None)  # it caches the credentials it found
    with pytest.raises(FetchError, match="no S3 credentials"):
        fetch_dataset(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- DVC -----------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


@pytest.fixture
def dataset_repo(tmp_path, s3_endpoint, s3_bucket, venv_env) -> Path:
    """A git repository whose DVC remote is on the loopback S3: data/market at tag v1 (the
    generator's seed 0), changed at v2 (seed 1), plus a git-tracked folder DVC does not track."""
    repo = tmp_path / "datasets-repo"
    repo.mkdir()
    env = venv_env()
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@example.org"],
        ["git", "config", "user.name", "test"],
        ["dvc", "init", "-q"],
        ["dvc", "remote", "add", "-d", "store", f"s3://{s3_bucket}/dvc"],
        ["dvc", "remote", "modify", "store", "endpointurl", s3_endpoint],
    ):
        _run(cmd, repo, env)
    (repo / "docs").mkdir()
    (repo / "docs" / "README.md").write_text("datasets\n")
    for tag, seed in (("v1", 0), ("v2", 1)):
        generate(repo / "data" / "market", SynthSpec(**SMALL, seed=seed))
        _run(["dvc", "add", "-q", "data/market"], repo, env)
        _run(["git", "add", "-A"], repo, env)
        _run(["git", "commit", "-qm", tag], repo, env)
        _run(["git", "tag", tag], repo, env)
        _run(["dvc", "push", "-q"], repo, env)
    # What a clone has: the data only on the remote, not in this copy's cache or workspace.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "market")
    return repo


def test_dvc_folder_is_fetched_at_its_revision_from_the_remote(tmp_path, dataset_repo):
    v1 = fetch_dataset(DvcReference(str(dataset_repo), "data/market", "v1"), tmp_path / "v1")
    head = fetch_dataset(DvcReference(str(dataset_repo), "data/market"), tmp_path / "head")

    generate(tmp_path / "seed0", SynthSpec(**SMALL, seed=0))
    expected = fetch_dataset(LocalReference(tmp_path / "seed0"), tmp_path / "expected")
    assert v1.content_sha256 == expected.content_sha256 != head.content_sha256
    commit = subprocess.run(
        ["git", "rev-parse", "v1^{commit}"], cwd=dataset_repo, capture_output=True, text=True
    ).stdout.strip()
    assert (v1.kind, v1.rev, v1.path) == ("dvc", commit, "data/market")
    dvc_file = (dataset_repo / "data" / "market.dvc").read_text()
    assert head.md5 in dvc_file and v1.md5.endswith(".dir") and v1.md5 != head.md5
    assert read_record(tmp_path / "v1") == v1
    tags = v1.lineage_tags("source")
    assert tags["reid.dataset.source.rev"] == commit and tags["reid.dataset.source.md5"] == v1.md5


@pytest.mark.parametrize(
    ("repo", "path", "rev", "message"),
    [
        ("{repo}", "data/market", "v9", "no such revision"),
        ("{repo}", "data/duke", "", "data/duke does not exist"),
        ("{repo}", "docs", "", "is not tracked by DVC"),
        ("{repo}", "data/market.dvc", "", "is not a folder"),
        ("{repo}-missing", "data/market", "", "no git repository at"),
    ],
)
def test_a_bad_dvc_reference_fails_with_its_cause_and_writes_nothing(
    tmp_path, dataset_repo, repo, path, rev, message
):
    reference = DvcReference(repo.format(repo=dataset_repo), path, rev)
    with pytest.raises(FetchError, match=message):
        fetch_dataset(reference, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dvc_data_missing_from_the_remote_fails_clearly(tmp_path, dataset_repo, s3_endpoint):
    client = s3_client(s3_endpoint)
    bucket = (dataset_repo / ".dvc" / "config").read_text().split("s3://")[1].split("/")[0]
    for item in client.list_objects_v2(Bucket=bucket, Prefix="dvc/")["Contents"]:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    with pytest.raises(FetchError, match="cannot download data/market from the DVC remote"):
        fetch_dataset(DvcReference(str(dataset_repo), "data/market", "v1"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_credentials_in_a_repository_url_never_reach_the_record_or_the_error(tmp_path):
    reference = parse_reference("dvc:https://user:s3cr3t@127.0.0.1:9/org/data.git?path=market")
    with pytest.raises(FetchError) as failure:
        fetch_dataset(reference, tmp_path / "out")
    assert "s3cr3t" not in str(failure.value)
