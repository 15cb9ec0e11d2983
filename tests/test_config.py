"""The plugin's recipe keys: splitting, coercion, validation messages."""

import pytest

from dyncot_plugin.config import DynCotArguments, DynCotConfigError, parse_dyncot_args, split_args


def test_vanilla_args_pass_through_as_the_same_object():
    args = {"stage": "sft", "model_name_or_path": "x"}
    rest, found = split_args(args)
    assert rest is args and found == {}
    argv = ["--stage", "sft"]
    rest, found = split_args(argv)
    assert rest is argv and found == {}


def test_dict_keys_are_split_without_mutating_the_input():
    args = {"stage": "sft", "dyncot_strategy": "dynamic", "dyncot_gamma": "0.25"}
    rest, found = split_args(args)
    assert rest == {"stage": "sft"}
    assert found == {"dyncot_strategy": "dynamic", "dyncot_gamma": 0.25}  # command-line strings are coerced
    assert "dyncot_gamma" in args


def test_list_form_both_spellings():
    rest, found = split_args(["--stage", "sft", "--dyncot_gamma", "0.3", "--dyncot_strategy=cot", "--do_train"])
    assert rest == ["--stage", "sft", "--do_train"]
    assert parse_dyncot_args(found) == DynCotArguments(dyncot_strategy="cot", dyncot_gamma=0.3)


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(DynCotConfigError, match="dyncot_gama.*Did you mean `dyncot_gamma`"):
        split_args({"dyncot_gama": 0.4})
    with pytest.raises(DynCotConfigError, match="Did you mean `dyncot_strategy`"):
        split_args(["--dyncot_stratgy", "cot"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dyncot_gamma": -0.1}, "dyncot_gamma: got -0.1; expected a finite number >= 0"),
        ({"dyncot_gamma": float("nan")}, "dyncot_gamma"),
        ({"dyncot_strategy": "dynamo"}, "allowed values are sft, cot, multitask, dynamic"),
        ({"dyncot_missing_cot": "skip"}, "allowed values are error, sft"),
        ({"dyncot_eval_samples": -1}, "expected an integer >= 0"),
        ({"dyncot_strategy": "dynamic", "dyncot_target_cot_ratio": 0.5, "dyncot_target_rescore": -1},
         "dyncot_target_rescore: got -1; expected an integer >= 0"),
        ({"dyncot_strategy": "dynamic", "dyncot_target_rescore": 16},
         "dyncot_target_rescore=16 feeds the target-share controller; this recipe has no dyncot_target_cot_ratio"),
    ],
)
def test_bad_values_state_what_is_allowed(kwargs, message):
    with pytest.raises(DynCotConfigError, match=message.replace("(", r"\(")):
        DynCotArguments(**kwargs)


def test_bad_number_on_the_command_line():
    with pytest.raises(DynCotConfigError, match="dyncot_gamma: got 'abc'; expected a number"):
        split_args(["--dyncot_gamma", "abc"])


def test_defaults_follow_the_paper():
    args = DynCotArguments()
    assert args.dyncot_strategy == "sft" and args.dyncot_gamma == 0.4 and not args.needs_cot
