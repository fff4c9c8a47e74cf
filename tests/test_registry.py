"""The plugin registry: built-ins via entry points, third-party packages, clashes, autoload."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tributary_core import (
    Embedder,
    LossHead,
    PluginError,
    Registry,
    SemanticType,
    TributaryError,
    hookimpl,
)
from tributary_core.registry import get_registry

BUILTIN_STYPES = {"identifier", "numerical", "timestamp", "boolean", "categorical", "text", "ignored"}


def install_fake_distribution(root: Path, monkeypatch: pytest.MonkeyPatch, *, dist: str,
                              module: str, source: str, entry_points: str) -> None:
    """Put a real installed distribution (dist-info + module) on sys.path, as pip would."""
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)


COUNTS_SOURCE = """
    from tributary_core import SemanticType, hookimpl

    class Count(SemanticType):
        name = "count"
        description = "non-negative integer counts"

    @hookimpl
    def tributary_semantic_types():
        return [Count]
"""

CLASH_SOURCE = """
    from tributary_core import SemanticType, hookimpl

    class MyNumbers(SemanticType):
        name = "numerical"

    @hookimpl
    def tributary_semantic_types():
        return [MyNumbers]
"""


#: the fake distributions these tests install
FAKE_DISTRIBUTIONS = "tributary-fakecounts,numbers-plus,broken-plugin,fancy-embed,other-hash"


@pytest.fixture(autouse=True)
def only_fake_distributions(monkeypatch):
    """Plugins really installed here (the example package tributary-counts) stay out, so these
    tests see the built-ins and their own fakes only; a test may set the variables itself."""
    monkeypatch.setenv("TRIBUTARY_PLUGINS", FAKE_DISTRIBUTIONS)


@pytest.fixture
def counts_plugin(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="tributary-fakecounts", module="tributary_counts_fake",
        source=COUNTS_SOURCE,
        entry_points='[tributary.semantic_types]\ncounts = tributary_counts_fake\n')


def test_builtins_load_through_entry_points():
    registry = Registry()
    assert set(registry.semantic_types) == BUILTIN_STYPES
    assert "hashing" in registry.embedder_names()
    by_name = {c.name: c for c in registry.components()}
    assert by_name["numerical"].source.distribution == "tributary"
    assert by_name["numerical"].target == "tributary_plugins.semantic_types.numerical:Numerical"
    assert by_name["hashing"].kind == "embedder"


def test_semantic_type_lookup_and_unknown():
    registry = Registry()
    assert registry.semantic_type("numerical").name == "numerical"
    with pytest.raises(PluginError, match=r"unknown semantic type 'money'; registered: boolean, "):
        registry.semantic_type("money")


def test_third_party_distribution_is_found(counts_plugin):
    registry = Registry()
    assert "count" in registry.semantic_types
    [count] = [c for c in registry.components() if c.name == "count"]
    assert (count.source.distribution, count.source.version) == ("tributary-fakecounts", "0.3")


def test_duplicate_from_distribution_names_both_sources(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="numbers-plus", module="numbers_plus_fake",
        source=CLASH_SOURCE, entry_points="[tributary.semantic_types]\nnumbers = numbers_plus_fake\n")
    with pytest.raises(PluginError) as info:
        Registry()
    message = str(info.value)
    assert "semantic type 'numerical' is registered twice" in message
    assert "(tributary 0.1.0)" in message and "(numbers-plus 0.3)" in message
    assert "tributary_plugins.semantic_types.numerical:Numerical" in message
    assert "numbers_plus_fake:MyNumbers" in message


def test_duplicate_loss_head_from_python():
    class HeadA(LossHead):
        name = "poisson"

    class HeadB(LossHead):
        name = "poisson"

    class PluginA:
        @hookimpl
        def tributary_loss_heads(self):
            return [HeadA]

    class PluginB:
        @hookimpl
        def tributary_loss_heads(self):
            return [HeadB]

    with pytest.raises(PluginError, match=r"loss head 'poisson' is registered twice: by plugin 'a'.* "
                                          r"and by plugin 'b'"):
        Registry(plugins=[(PluginA(), "a"), (PluginB(), "b")])


def test_misspelled_hook_is_refused():
    class Typo:
        @hookimpl
        def tributary_semantic_type(self):  # missing the final "s"
            return []

    with pytest.raises(PluginError, match=r"plugin 'typo'.*unknown hook 'tributary_semantic_type'"):
        Registry(plugins=[(Typo(), "typo")])


@pytest.mark.parametrize(("returned", "fragment"), [
    (lambda: int, "not a subclass of SemanticType"),
    (lambda: "numerical", "must return a list of classes"),
])
def test_plugin_returning_garbage(returned, fragment):
    class Bad:
        @hookimpl
        def tributary_semantic_types(self):
            value = returned()
            return value if isinstance(value, str) else [value]

    with pytest.raises(PluginError, match=fragment):
        Registry(plugins=[(Bad(), "bad")])


def test_nameless_semantic_type():
    class Nameless(SemanticType):
        pass

    class P:
        @hookimpl
        def tributary_semantic_types(self):
            return [Nameless]

    with pytest.raises(PluginError, match="has no 'name' string"):
        Registry(plugins=[(P(), "p")])


def test_broken_plugin_names_its_distribution(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="broken-plugin", module="broken_plugin_fake",
        source="raise ImportError('needs libfoo')\n",
        entry_points="[tributary.semantic_types]\nbroken = broken_plugin_fake\n")
    with pytest.raises(PluginError, match=r"'broken' \(broken-plugin 0.3\).*ImportError: needs libfoo"):
        Registry()


def test_disable_autoload_keeps_builtins_only(counts_plugin, monkeypatch):
    monkeypatch.setenv("TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = Registry()
    assert set(registry.semantic_types) == BUILTIN_STYPES
    skipped = [(s.distribution, reason) for s, reason in registry.skipped]
    assert ("tributary-fakecounts", "TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD is set") in skipped
    assert {reason for _, reason in skipped} == {"TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD is set"}


def test_disable_autoload_also_skips_a_broken_plugin(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="broken-plugin", module="broken_plugin_fake",
        source="raise ImportError('needs libfoo')\n",
        entry_points="[tributary.semantic_types]\nbroken = broken_plugin_fake\n")
    monkeypatch.setenv("TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD", "true")
    assert "numerical" in Registry().semantic_types


def test_plugins_env_narrows_autoload(counts_plugin, monkeypatch):
    monkeypatch.setenv("TRIBUTARY_PLUGINS", "some-other-dist")
    assert "count" not in Registry().semantic_types
    monkeypatch.setenv("TRIBUTARY_PLUGINS", "some-other-dist, Tributary_FakeCounts")
    assert "count" in Registry().semantic_types


def test_autoload_false_takes_only_explicit_plugins():
    import tributary_plugins.semantic_types as builtins

    registry = Registry(autoload=False, plugins=[(builtins, "builtins")])
    assert set(registry.semantic_types) == BUILTIN_STYPES
    assert registry.embedder_names() == []


def test_unknown_embedder_lists_installed():
    with pytest.raises(PluginError, match=r"unknown embedder 'bert'; installed: .*hashing"):
        Registry().create_embedder("bert")


def test_embedder_from_entry_point_works():
    embedder = Registry().create_embedder("hashing", dimension=32)
    assert isinstance(embedder, Embedder)
    vectors = embedder.embed(["delay", "delay", "carrier is AA"])
    assert vectors.shape == (3, 32) and vectors.dtype.name == "float32"
    assert (vectors[0] == vectors[1]).all() and not (vectors[0] == vectors[2]).all()
    assert embedder.identity.backend == "hashing" and embedder.identity.dimension == 32


def test_third_party_embedder_refused_when_autoload_disabled(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="fancy-embed", module="fancy_embed_fake",
        source="""
            from tributary_plugins.embedders.hashing import HashingEmbedder
            class Fancy(HashingEmbedder):
                name = "fancy"
        """,
        entry_points="[tributary.embedders]\nfancy = fancy_embed_fake:Fancy\n")
    assert Registry().create_embedder("fancy", dimension=8).embed(["a"]).shape == (1, 8)
    monkeypatch.setenv("TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD", "1")
    with pytest.raises(PluginError, match=r"embedder 'fancy'.*fancy-embed 0.3.*is not loaded: "
                                          r"TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD is set"):
        Registry().create_embedder("fancy")


def test_duplicate_embedder_names_both(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="other-hash", module="other_hash_fake",
        source="from tributary_plugins.embedders.hashing import HashingEmbedder as H\n",
        entry_points="[tributary.embedders]\nhashing = other_hash_fake:H\n")
    with pytest.raises(PluginError, match=r"embedder 'hashing' is registered twice: by .*tributary "
                                          r"0.1.0.* and by .*other-hash 0.3"):
        Registry().create_embedder("hashing")


def test_process_registry_is_cached_and_resettable():
    from tributary_core import reset_registry

    first = get_registry()
    assert get_registry() is first
    reset_registry()
    assert get_registry() is not first


def test_embedder_base_checks_backend_output():
    class Liar(Embedder):
        name = "liar"
        default_model = "m"

        def _embed_batch(self, texts):
            import numpy as np

            return np.full((len(texts), self.dimension), np.nan, dtype=np.float32)

    with pytest.raises(TributaryError, match=r"embedder 'liar' \(model 'm'\) returned non-finite"):
        Liar(dimension=4).embed(["x"])

    class Short(Embedder):
        name = "short"
        default_model = "m"

        def _embed_batch(self, texts):
            import numpy as np

            return np.zeros((len(texts) - 1, self.dimension), dtype=np.float32)

    with pytest.raises(TributaryError, match=r"returned shape \(1, 4\) for 2 strings"):
        Short(dimension=4).embed(["x", "y"])

    class Narrow(Embedder):
        name = "narrow"
        default_model = "m"

        def _embed_batch(self, texts):
            import numpy as np

            return np.ones((len(texts), 3), dtype=np.float32)

    with pytest.raises(TributaryError, match=r"gives 3 values per string, fewer than the requested "
                                              r"dimension 4; pass --dimension 3 or less"):
        Narrow(dimension=4).embed(["x"])
