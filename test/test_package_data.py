"""Where the package finds its files: data shipped with it (source tree or an install prefix) and
the GSM8K split the benchmarks default to."""
import sys

import pytest

from hola_ros import package_data


@pytest.fixture
def fake_layout(tmp_path, monkeypatch):
    """A checkout at tmp/repo, a venv at tmp/repo/.venv, the working directory at tmp/elsewhere."""
    repo = tmp_path / "repo"
    (repo / "hola_ros").mkdir(parents=True)
    (repo / "config").mkdir()
    (repo / "config" / "graph.yaml").write_text("nodes: []\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(package_data, "__file__", str(repo / "hola_ros" / "package_data.py"))
    monkeypatch.setattr(sys, "prefix", str(repo / ".venv"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.delenv("HOLA_ROS_GSM8K", raising=False)
    return tmp_path


def test_package_file_prefers_the_source_tree_then_install_prefixes(fake_layout, monkeypatch):
    assert package_data.package_file("config/graph.yaml") == fake_layout / "repo" / "config" / "graph.yaml"
    installed = fake_layout / "install"
    (installed / "share" / "hola_ros" / "data" / "kb").mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(installed))
    assert package_data.package_file("data/kb") == installed / "share" / "hola_ros" / "data" / "kb"
    with pytest.raises(FileNotFoundError, match="hola_ros nothing/here not found"):
        package_data.require_package_file("nothing/here")


def test_gsm8k_is_found_above_the_checkout_or_taken_from_the_environment(fake_layout, monkeypatch):
    expected = fake_layout / "shared" / "data" / "gsm8k" / "train.jsonl"
    assert package_data.gsm8k_train() == expected and not expected.exists()  # where it looked first
    expected.parent.mkdir(parents=True)
    expected.write_text("{}\n")
    assert package_data.gsm8k_train() == expected
    monkeypatch.setenv("HOLA_ROS_GSM8K", str(fake_layout / "mine.jsonl"))
    assert package_data.gsm8k_train() == fake_layout / "mine.jsonl"


def test_gsm8k_is_found_from_an_installed_copy_through_the_venv(fake_layout, monkeypatch):
    # an installed copy: the module lives in site-packages, the venv sits in the checkout
    site = fake_layout / "repo" / ".venv" / "lib" / "python3.11" / "site-packages" / "hola_ros"
    site.mkdir(parents=True)
    monkeypatch.setattr(package_data, "__file__", str(site / "package_data.py"))
    expected = fake_layout / "shared" / "data" / "gsm8k" / "train.jsonl"
    expected.parent.mkdir(parents=True)
    expected.write_text("{}\n")
    assert package_data.gsm8k_train() == expected
