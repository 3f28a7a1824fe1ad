"""What CI runs: .ci/run calls scripts/test.sh, which runs the whole suite and lists its 10
slowest tests at the end (README, "Keeping the suite fast")."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_whole_suite_and_lists_the_slowest_tests():
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    command = [line for line in (ROOT / "scripts" / "test.sh").read_text().splitlines()
               if "-m pytest" in line]
    assert len(command) == 1 and "--durations=10" in command[0].split() and " tests " in command[0]
    assert " -k " not in command[0] and " -m " not in command[0].replace("-m pytest", "")


def test_property_tests_draw_the_same_examples_every_run():
    """A landing never rests on a lucky draw: the suite's hypothesis profile is derandomized."""
    from hypothesis import settings

    assert settings.default.derandomize is True


def test_the_suite_installs_its_own_requirements():
    """The real-corpus tests need a package that requirements.txt does not carry: scripts/test.sh
    installs requirements-test.txt, which pins it (CI has nothing installed by hand)."""
    assert "bash scripts/setup.sh requirements-test.txt" in (ROOT / "scripts" / "test.sh").read_text()
    assert "seinfeld-laugh-corpus==" in (ROOT / "requirements-test.txt").read_text()


def test_setup_hands_pips_configured_sources_to_uv(tmp_path):
    """uv reads no pip configuration: scripts/setup.sh passes pip's find-links, indexes and
    constraints on (on these machines the CPU build of torch is only found that way)."""
    import os
    import subprocess

    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = /wheels/here\nextra-index-url = file:///a/simple file:///b/simple\n"
                    f"constraint = {constraints}\n")
    script = (ROOT / "scripts" / "setup.sh").read_text()
    function = script[script.index("pip_settings() {"):script.index("\n}\n", script.index("pip_settings() {")) + 3]
    out = subprocess.run(["bash", "-c", f"{function}\npip_settings"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PIP_CONFIG_FILE": str(conf)}, check=True).stdout.split()
    assert {"--find-links=/wheels/here", "--extra-index-url=file:///a/simple", "--extra-index-url=file:///b/simple",
            f"--constraint={constraints}"} <= set(out)
