"""Run directory names: the same command maps to the same directory, at any length."""

from __future__ import annotations

from edge_conformer.training.rundir import MAX_NAME_CHARS, short_dirname

# The overrides of a real LibriSpeech command (recipes/librispeech/README.md), as Hydra joins them.
LONG = (
    "data.data_dir=data/ls-test-other,data.dev_splits=[test-other],data.max_duration=120,"
    "data.num_buckets=5,data.num_workers=1,data.spec_augment=null,data.test_splits=[test-other],"
    "data.tokenizer.vocab_size=128,data.train_splits=[test-other],data=librispeech,logger=csv,"
    "model=xs,optim.warmup_steps=100,trainer.val_check_interval=100"
)


def test_short_override_lists_name_the_directory_as_they_are():
    assert short_dirname("model.norm=mad,model.subsampling=regular") == (
        "model.norm=mad,model.subsampling=regular"
    )
    assert short_dirname("") == ""


def test_long_override_lists_are_cut_to_a_stable_unique_name():
    name = short_dirname(LONG)
    assert len(LONG) > 255 >= len(name.encode()) and len(name) == MAX_NAME_CHARS
    assert name == short_dirname(LONG)  # the same command resumes in the same directory
    assert name != short_dirname(LONG.replace("vocab_size=128", "vocab_size=256"))
    assert name.startswith(LONG[:100].replace("/", "_"))


def test_paths_in_overrides_do_not_nest_directories():
    name = short_dirname("data.corpus_dir=/data/LibriSpeech,model=s")
    assert "/" not in name and name.startswith("data.corpus_dir=_data_LibriSpeech,model=s-")
    assert name != short_dirname("data.corpus_dir=_data_LibriSpeech,model=s")
