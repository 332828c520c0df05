import pytest

from asrn.search_space import DEFAULT_SPACE, SearchSpaceError, load_search_space, to_tune_space


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_default_space_surrounds_the_default_recipe():
    from asrn.loop import RECIPES

    space, recipe = load_search_space(), RECIPES["default"]
    assert DEFAULT_SPACE.name == "default.yaml"
    assert set(space) == {"dropout", "lr", "batch_size", "weight_decay"}
    for name in ("dropout", "lr", "weight_decay"):
        assert space[name].low < getattr(recipe, name) < space[name].high, name
    assert space["lr"].distribution == "loguniform" and recipe.batch_size in space["batch_size"].values
    tune_space = to_tune_space(space)
    assert tune_space["batch_size"].categories == list(space["batch_size"].values)
    for _ in range(20):
        assert 1e-4 <= tune_space["lr"].sample() <= 1e-1


@pytest.mark.parametrize("text,message", [
    ("momentum: {distribution: uniform, low: 0.1, high: 0.9}\n", "unknown hyperparameter 'momentum'"),
    ("dropout: {distribution: uniform, low: 0.5, high: 0.5}\n", "'dropout' has an empty range"),
    ("lr: {distribution: gaussian, low: 0.1, high: 0.2}\n", "'lr' has bad distribution 'gaussian'"),
    ("lr: {distribution: loguniform, low: 0, high: 0.1}\n", "'lr' loguniform needs low > 0"),
    ("batch_size: {distribution: choice, values: []}\n", "'batch_size' choice needs a non-empty"),
    ("batch_size: {distribution: choice, values: [8, 0]}\n", "'batch_size' has invalid value"),
    ("batch_size: {distribution: uniform, low: 8, high: 64}\n", "'batch_size' is an integer"),
    ("dropout: {distribution: uniform, low: 0.3, high: 1.5}\n", "leaves the valid values of dropout"),
    ("dropout: [0.1, 0.2]\n", "'dropout' needs a mapping"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("lr: {distribution: choice, values: [true]}\n", "'lr' has invalid value(s) [True]"),
    ("dropout: {distribution: choice, values: [0.1, false]}\n", "'dropout' has invalid value(s) [False]"),
    ("batch_size: {distribution: choice, values: [true, 8]}\n", "'batch_size' has invalid value(s) [True]"),
    ("lr: {distribution: loguniform, low: true, high: 0.1}\n", "'lr' loguniform needs numeric 'low' and 'high'"),
    ("batch_size: {distribution: randint, low: 8, high: true}\n", "'batch_size' randint needs numeric"),
    ("batch_size: {distribution: choice, values: [100000000]}\n", "'batch_size' has invalid value(s) [100000000]"),
    ("batch_size: {distribution: choice, values: [8, 1e8]}\n", "['1e8'] (valid: integers in [1, 4096]) (YAML reads"),
    ("batch_size: {distribution: randint, low: 8, high: 10000}\n", "valid values of batch_size: [1, 4096]"),
    ("batch_size: {distribution: randint, low: 8, high: 1e8}\n", "YAML reads 1e8 as a string: write it as 1.0e+08"),
    ("batch_size: {distribution: randint, low: 8.5, high: 64}\n", "'batch_size' randint needs integer"),
    ("hidden: {distribution: choice, values: [256, 1000000]}\n", "'hidden' has invalid value(s) [1000000]"),
    ("hidden: {distribution: randint, low: 64, high: 1000000}\n", "valid values of hidden: [1, 4096]"),
    ("lr: {distribution: loguniform, low: 1.0e-3, high: 20}\n", "valid values of lr: (0, 10]"),
    ("lr: {distribution: choice, values: [0.1, 11]}\n", "'lr' has invalid value(s) [11]"),
    ("lr: {distribution: loguniform, low: 1.0e-3, high: .inf}\n", "valid values of lr: (0, 10]"),
    ("lr: {distribution: uniform, low: 0, high: 0.1}\n", "valid values of lr: (0, 10]"),
    ("weight_decay: {distribution: uniform, low: 0.0, high: 11.0}\n", "valid values of weight_decay: [0, 10]"),
    ("dropout: {distribution: uniform, low: .nan, high: 0.5}\n", "'dropout' has an empty range"),
])
def test_bad_space_names_the_file_and_the_key(tmp_path, text, message):
    path = _space(tmp_path, text)
    with pytest.raises(SearchSpaceError) as caught:
        load_search_space(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


@pytest.mark.parametrize("text,message", [
    ("lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}\ndropout: {distribution: uniform, low: 0.1, "
     "high: 0.5}\nlr: {distribution: loguniform, low: 1.0e-3, high: 1.0e-2}\n",
     "line 3: key 'lr' appears twice (first on line 1)"),
    ("lr:\n  distribution: loguniform\n  low: 1.0e-4\n  low: 1.0e-3\n  high: 0.1\n",
     "line 4: key 'low' appears twice (first on line 3)"),
])
def test_duplicate_keys_are_refused_naming_key_and_line(tmp_path, text, message):
    path = _space(tmp_path, text)
    with pytest.raises(SearchSpaceError) as caught:
        load_search_space(path)
    assert str(caught.value) == f"{path}: {message}"


def test_merge_keys_are_not_duplicates(tmp_path):
    text = "dropout_base: &base {distribution: uniform, low: 0.1, high: 0.5}\ndropout: {<<: *base, high: 0.6}\n"
    with pytest.raises(SearchSpaceError, match="unknown hyperparameter 'dropout_base'"):
        load_search_space(_space(tmp_path, text))


def test_bad_yaml_is_one_line_naming_line_and_column(tmp_path):
    path = _space(tmp_path, "lr: {distribution: loguniform, low: 1.0e-4\n")
    with pytest.raises(SearchSpaceError) as caught:
        load_search_space(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: line 2, column 1: not valid YAML") and "\n" not in text


def test_edges_of_the_valid_ranges_are_accepted(tmp_path):
    space = load_search_space(_space(tmp_path, (
        "lr: {distribution: loguniform, low: 1.0e-8, high: 10}\n"
        "batch_size: {distribution: randint, low: 1, high: 4097}\n"
        "hidden: {distribution: choice, values: [1, 4096]}\n"
        "dropout: {distribution: uniform, low: 0, high: 0.99}\n")))
    assert space["lr"].high == 10 and space["batch_size"].high == 4097 and space["hidden"].values == (1, 4096)


def test_missing_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="not found"):
        load_search_space(tmp_path / "nope.yaml")
