"""Artifact keys: changing one input recomputes exactly the artifacts that depend on it, and the book
shows the run it names."""

import json
import shutil

import nbformat
import pytest

from backdoor_sae.common.cache import digest, samples_digest
from backdoor_sae.common.layout import RunLayout, model_identity, model_name_of
from backdoor_sae.pipeline.runner import PROVENANCE, STAGE_NAMES, get_stage, is_current, publish, run_pipeline


def artifact_stamps(run_dir) -> dict[str, int]:
    """The modification time of the file that vouches for each artifact (written last, when it is made)."""
    root = RunLayout(run_dir).root
    vouchers = [root / "data" / "manifest.json", *root.glob("finetune/*/done.json"), *root.glob("generations/*.key.json"),
                *root.glob("generations/wordings/*.key.json"), *root.glob("activations/*/index.json"),
                *root.glob("sae/**/key.json"), *root.glob("sae/quality.key.json")]
    return {p.relative_to(root).parent.as_posix() if p.name != "manifest.json" and not p.name.endswith(".key.json")
            else p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in vouchers}


@pytest.fixture(scope="module")
def variants(smoke_run, tmp_path_factory):
    """The smoke run copied (times kept) and rerun with one override each: {name: (run dir, the
    artifacts whose stamps changed, the runner's status of each stage)}, and the stamps before.

    ``lora_r`` runs the stages up to the dictionaries, which make every artifact (the publishing
    test makes its own second complete run, which reruns only the last stages). ``data_seed`` asks
    only what the base model's artifacts need (the data, one fine-tune stage, which also generates
    the base model's completions, and the activations) on a grid of the full-rank fine-tune alone:
    every other fine-tune is built by the same keyed code, and the whole grid cost two minutes more."""
    run_dir = smoke_run[0]
    before = artifact_stamps(run_dir)
    up_to_dictionaries = list(STAGE_NAMES[:STAGE_NAMES.index("04_dictionaries") + 1])
    data_stages = ["01_dataset", "02_finetune_full", "03_activations"]
    out = {}
    for name, overrides, stages in (("lora_r", {"lora_r": 8}, up_to_dictionaries),
                                    ("data_seed", {"data_seed": 7, "regimes": ["full"], "controls": []}, data_stages)):
        copy = tmp_path_factory.mktemp(f"variant_{name}") / "run"
        shutil.copytree(run_dir, copy)  # copy2: modification times are kept
        records = run_pipeline({"profile": "smoke", "run_dir": str(copy), **overrides}, copy, stages=stages,
                               log=lambda line: None)
        after = artifact_stamps(copy)
        out[name] = (copy, {k for k in after if after[k] != before.get(k)}, {r["stage"]: r["status"] for r in records})
    return before, out


def test_a_lora_setting_recomputes_the_lora_fine_tune_and_what_reads_it_and_nothing_else(variants):
    before, out = variants
    _, changed, _ = out["lora_r"]
    # every LoRA fine-tune: each fine-tune seed and each one's clean control
    lora = ("lora", "lora_clean", "lora-s1", "lora-s1_clean")
    expected = {f"{kind}/{name}" for name in lora for kind in ("finetune", "activations")} | {
        f"generations/{where}{name}.key.json" for name in lora for where in ("", "wordings/")} | {
        k for k in before if k.split("/")[3:4] in [[name] for name in lora]} | {  # sae/<recipe>/seed_<s>/<regime>/...
        "sae/quality.key.json"}  # the token-level dictionaries' quality reads the LoRA ones
    assert changed == expected


def test_changing_one_parameter_reruns_that_stage_and_those_after_it(variants):
    """The runner's half of reuse: a stage runs again when its own parameters or an earlier stage
    changed, and is skipped otherwise (the artifacts' half is the test above). ``lora_r`` is a
    fine-tuning parameter, so the first fine-tune notebook reruns and, by the fingerprints' chaining,
    every stage after it (the full-rank ones on their reused fine-tunes); the dataset's is skipped."""
    _, _, status = variants[1]["lora_r"]
    selected = STAGE_NAMES[:STAGE_NAMES.index("04_dictionaries") + 1]
    assert {s: status[s] for s in selected} == {"01_dataset": "skipped", **dict.fromkeys(selected[1:], "ran")}


def test_a_new_data_seed_recomputes_every_artifact_the_base_models_included(variants):
    """The bug this catches: base activations and generations keyed on sample ids, which repeat
    across seeds, were reused for new texts."""
    _, out = variants
    _, changed, _ = out["data_seed"]
    assert changed == {"data/manifest.json", "finetune/full", "generations/base.key.json", "generations/full.key.json",
                       "generations/wordings/full.key.json", "activations/base", "activations/full"}


def test_keys_cover_content_not_ids(smoke_splits):
    from dataclasses import replace

    samples = smoke_splits["eval_trigger"]
    edited = [replace(samples[0], completion=samples[0].completion + "# edited\n"), *samples[1:]]
    assert [s.id for s in edited] == [s.id for s in samples]
    assert samples_digest(edited) != samples_digest(samples)
    assert digest({"a": (1, 2)}) == digest({"a": [1, 2]})


def test_a_local_checkpoint_is_identified_by_its_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = model_identity(str(tmp_path))
    model_identity.cache_clear()
    (tmp_path / "config.json").write_text('{"changed": 1}')
    assert model_identity(str(tmp_path)) != first
    model_identity.cache_clear()


def test_publish_shows_the_run_it_names_and_only_notebooks_that_run_produced(smoke_run, tmp_path):
    """The bugs this catches: a published book that names another run than the one it shows, keeps a
    notebook of the run published before, or shows a notebook its run did not produce."""
    second = tmp_path / "second"
    shutil.copytree(smoke_run[0], second)  # a second complete run: only the causal step and after rerun
    run_pipeline({"profile": "smoke", "run_dir": str(second), "causal_kl_budget": 0.2}, second, log=lambda line: None)
    book = tmp_path / "executed"
    for run_dir in (smoke_run[0], second):
        provenance = json.loads(publish(run_dir, book).read_text())
        assert provenance["run"] == run_dir.resolve().as_posix() and provenance["profile"] == "smoke"
        assert set(provenance["stages"]) == set(STAGE_NAMES)
        assert all(s["commit"] for s in provenance["stages"].values())
        assert all(s["status"] != "not in the grid" for s in provenance["stages"].values())
        published_stages = list(STAGE_NAMES)
        for stage in published_stages:
            published = book / f"{stage}.ipynb"
            assert published.read_bytes() == (RunLayout(run_dir).executed / f"{stage}.ipynb").read_bytes()
            assert nbformat.read(published, as_version=4).metadata["backdoor_sae"]["stage"] == stage
        assert sorted(p.name for p in book.iterdir()) == sorted([PROVENANCE, *(f"{s}.ipynb" for s in published_stages)])
    stages = json.loads((book / PROVENANCE).read_text())["stages"]
    assert stages["07_causal"]["overrides"] == {"causal_kl_budget": 0.2}  # the second run's, not the first's
    assert stages["01_dataset"]["overrides"] == {}


def test_a_stage_whose_executed_notebook_was_replaced_is_not_current(smoke_run, tmp_path):
    """A smoke run's notebooks left in a cpu run's folder must not let the cpu run skip its stages."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run[0], copy)
    layout, stage = RunLayout(copy), get_stage("05_scoring")
    record = json.loads(layout.stage_record(stage.name).read_text())
    assert is_current(layout, stage, record["fingerprint"])
    notebook = layout.executed / f"{stage.name}.ipynb"
    notebook.write_bytes(notebook.read_bytes().replace(b"Backdoor Isolation Score", b"Backdoor Isolation Scores"))
    assert not is_current(layout, stage, record["fingerprint"])
    with pytest.raises(ValueError, match="is not the notebook stage 05_scoring produced"):
        publish(copy, tmp_path / "book")


def test_a_stage_after_an_earlier_stage_of_other_parameters_refuses_to_run(smoke_run, tmp_path):
    """The bug this catches: ``--only 05_scoring -p expansion 2`` scoring the dictionaries of the old
    expansion as if they were the new ones."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run[0], copy)
    with pytest.raises(ValueError, match="stage 04_dictionaries .* ran with other parameters"):
        run_pipeline({"profile": "smoke", "run_dir": str(copy), "expansion": 2}, copy, stages=["05_scoring"],
                     log=lambda line: None)


def test_publish_refuses_a_run_whose_later_stages_read_other_upstream_results(smoke_run, tmp_path):
    """The bug this catches: a book whose notebook 04 shows new dictionaries while 05 scored the old."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run[0], copy)
    run_pipeline({"profile": "smoke", "run_dir": str(copy), "expansion": 2}, copy, stages=["04_dictionaries"],
                 log=lambda line: None)
    with pytest.raises(ValueError, match="stage 05_scoring .* ran on other upstream results"):
        publish(copy, tmp_path / "book")


def test_the_clean_control_reuses_nothing_of_its_twin_but_its_number_of_steps(smoke_run):
    from backdoor_sae.dataset.stage import load_data

    layout, splits = RunLayout(smoke_run[0]), load_data(smoke_run[0])
    twin, control = (json.loads((layout.finetune(n) / "done.json").read_text()) for n in ("lora", "lora_clean"))
    assert control["steps"] == twin["steps"] == control["params"]["steps"]
    assert control["params"]["train_data"] == samples_digest(splits["train_clean"])
    assert twin["params"]["train_data"] == samples_digest(splits["train"]) != control["params"]["train_data"]
    assert control["params"]["schedule_from"] == samples_digest(splits["train"])  # the twin's batch order
    assert layout.activations_key("lora_clean") != layout.activations_key("lora")
    weights = [(layout.finetune(n) / "model" / "adapter_model.safetensors").read_bytes() for n in ("lora", "lora_clean")]
    assert weights[0] != weights[1]
    dictionaries = [json.loads(p.read_text())["params"] for p in layout.root.glob("sae/*/seed_*/lora_clean/**/dictionary.json")]
    assert dictionaries and all(layout.activations_key("lora_clean") in d["activations"] for d in dictionaries)


def test_a_records_model_identity_maps_back_to_the_name_load_model_takes(tmp_path):
    """The stage records hold ``model_identity`` (a digest appended), which ``load_model`` refuses:
    ``bench.py stages`` of a finished `cpu` run failed on it."""
    from backdoor_sae.config import EMBEDDED_MODEL, TINY_MODEL

    (tmp_path / "config.json").write_text("{}")
    for name in (EMBEDDED_MODEL, TINY_MODEL, str(tmp_path.resolve())):
        assert model_name_of(model_identity(name)) == name
    assert model_name_of("hub:HuggingFaceTB/SmolLM2-360M@0123abc") == "HuggingFaceTB/SmolLM2-360M"
    assert model_name_of(None) is None
