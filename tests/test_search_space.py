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
])
def test_bad_space_names_the_key(tmp_path, text, message):
    with pytest.raises(SearchSpaceError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_search_space(_space(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="not found"):
        load_search_space(tmp_path / "nope.yaml")
