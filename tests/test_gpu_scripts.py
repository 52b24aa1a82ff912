"""bench/gpu_check.sh, the one script of the GPU machine, stays runnable without a GPU to try it
on: its syntax, its steps, every Python script and option it invokes (against that script's
--help), its step machinery (log line, archive, exit status) on the CPU, and the CPU-runnable
pieces it relies on (the sanitizer case, the decode summary, the forward-variant table)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
TEXT = SCRIPT.read_text()
OPTION = r"(?<![\w-])--([A-Za-z][A-Za-z0-9-]*)"  # an option's name, without its dashes


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, comment lines dropped."""
    lines, current = [], ""
    for line in text.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def _invocations() -> dict[str, set[str]]:
    """{command: options} of every `python bench/X.py ...` and `torchrun ... -m swaa_ext.cli SUB`
    the script runs (command: the script path, or "-m swaa_ext.cli SUB").  Options are the
    --names written on the command's line, defaults of ${VAR:---opt ...} included; options that
    only reach the command through a variable are not seen."""
    found: dict[str, set[str]] = {}
    for line in _logical_lines(TEXT):
        m = re.search(r"\bpython (?:-X \S+ )?(bench/[\w/]+\.py)\b(.*)", line)
        if m:
            command, rest = m.group(1), m.group(2)
        else:
            m = re.search(r"\btorchrun\b.*?-m (swaa_ext\.\w+) (\w+)(.*)", line)
            if not m:
                continue
            command, rest = f"-m {m.group(1)} {m.group(2)}", m.group(3)
        rest = re.split(r" (?:>|2>|\|\||<<|&)", rest)[0].replace(":-", ":- ")
        found.setdefault(command, set()).update(re.findall(OPTION, rest))
    # `all` sets a default of BENCH_ARGS, which goes to bench_cuda_kernels.py
    bench_args = re.search(r'"\$\{BENCH_ARGS=([^}]*)\}"', TEXT).group(1)
    found["bench/bench_cuda_kernels.py"].update(re.findall(OPTION, bench_args))
    return found


INVOCATIONS = _invocations()


def _run(args, env=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _gpu_check(tmp_path, *steps, **env):
    out = tmp_path / "out"
    proc = _run(["bash", str(SCRIPT), *steps],
                env={"OUT": str(out), "SKIP_BUILD": "1", "GPU_CHECK_BUDGET": "300", **env})
    return proc, out


def test_skip_build_0_builds(tmp_path):
    # SKIP_BUILD=0 means build (session 19 lost a GPU call to a script that skipped it);
    # a one-second limit stops the build at once, so the step fails where a skip would pass
    proc, out = _gpu_check(tmp_path, "build", SKIP_BUILD="0", BUILD_TIMEOUT="1")
    log = (out / "log").read_text()
    assert re.search(r"^build +FAILED .*failed: build", log, re.M), log
    assert "not built" not in log


def test_bash_syntax():
    proc = _run(["bash", "-n", str(SCRIPT)])
    assert proc.returncode == 0, proc.stderr


def test_every_step_in_the_usage_is_handled_and_documented():
    steps = re.search(r"^STEPS_KNOWN=\(([^)]*)\)", TEXT, re.M).group(1).split()
    assert {"build", "test", "sanitize", "tune", "bench", "decode", "loop", "e2e", "pack",
            "quality", "all"} <= set(steps)
    for step in steps:
        assert re.search(rf"^#   {re.escape(step)} ", TEXT, re.M), f"{step}: not in the header"
        if step != "all":
            assert re.search(rf"^step_{step}\(\) \{{", TEXT, re.M), f"{step}: no step_{step}()"
    all_steps = re.search(r"add_steps (test [\w ]+)$", TEXT, re.M).group(1).split()
    assert set(all_steps) <= set(steps) - {"all"}
    proc = _run(["bash", str(SCRIPT)])
    assert proc.returncode == 2 and all(s in proc.stdout for s in steps)
    proc = _run(["bash", str(SCRIPT), "test", "tset"])
    assert proc.returncode == 2 and "unknown step: tset" in proc.stdout


def test_the_invocations_are_found():
    # guards the parser below: a script it no longer sees would pass unchecked
    assert {"bench/bench_cuda_kernels.py", "bench/tune_cuda_kernels.py", "bench/sanitize_case.py",
            "bench/bench_decode.py", "bench/bench_memory.py", "bench/bench_decode_loop.py",
            "bench/count_step_kernels.py", "bench/bench_e2e.py", "bench/bench_pack.py",
            "bench/bench_attention.py", "bench/quality/evaluate.py", "bench/quality/pretrain.py",
            "bench/quality/data.py", "bench/ncu_case.py", "-m swaa_ext.cli finetune"} <= set(INVOCATIONS)
    assert {"parts", "out"} <= INVOCATIONS["bench/tune_cuda_kernels.py"]
    assert {"S", "N", "out"} <= INVOCATIONS["bench/bench_cuda_kernels.py"]
    assert {"preset", "plot", "plot-from", "run"} <= INVOCATIONS["bench/bench_e2e.py"]


@pytest.mark.parametrize("command", sorted(INVOCATIONS))
def test_invoked_script_exists_and_accepts_its_options(command):
    if command.startswith("-m "):
        args = [sys.executable, *command.split(), "--help"]
    else:
        assert (ROOT / command).is_file(), f"{command} does not exist"
        args = [sys.executable, command, "--help"]
    proc = _run(args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    accepted = set(re.findall(OPTION, proc.stdout))
    missing = INVOCATIONS[command] - accepted
    assert not missing, f"{command} --help does not list {sorted(missing)}"


def test_a_step_writes_its_log_line_and_archive(tmp_path):
    # TEST_ARGS="-m cuda" selects nothing in this file: pytest's exit code 5 is no failure
    proc, out = _gpu_check(tmp_path, "test", TESTS="tests/test_decode_plan.py",
                           TEST_ARGS="-m cuda")
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (out / "log").read_text()
    assert re.search(r"^build +ok .*SKIP_BUILD", log, re.M)
    assert re.search(r"^test +ok .*deselected", log, re.M)
    assert "done, status 0" in log
    assert sorted(p.name for p in out.iterdir()) == ["console.txt", "gpu_check_test.tgz", "log"]
    with tarfile.open(out / "gpu_check_test.tgz") as tar:
        names = set(tar.getnames())
    assert {"log", "console.txt", "./build/build_info.log", "./test/test_decode_plan.log"} <= names


def test_test_k_reaches_pytest_as_one_expression(tmp_path):
    # a -k expression with spaces: TEST_ARGS would split it into words (pytest then looks for
    # a file "or"); TEST_K passes it whole
    names = re.findall(r"^def (test_\w+)", (ROOT / "tests/test_decode_plan.py").read_text(), re.M)
    expr = f"{names[0]} or {names[1]}"
    proc, out = _gpu_check(tmp_path, "test", TESTS="tests/test_decode_plan.py", TEST_K=expr)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (out / "log").read_text()
    assert re.search(r"^test +ok .*deselected", log, re.M), log
    with tarfile.open(out / "gpu_check_test.tgz") as tar:
        part = tar.extractfile("./test/test_decode_plan.log").read().decode()
    assert re.search(r"\b[1-9]\d* passed", part) and "deselected" in part, part[-2000:]


def test_a_failing_part_fails_its_step_and_the_run(tmp_path):
    proc, out = _gpu_check(tmp_path, "test", TESTS="tests/test_no_such_file.py")
    assert proc.returncode == 1
    log = (out / "log").read_text()
    assert re.search(r"^test +FAILED .*failed: test_no_such_file", log, re.M)
    assert "done, status 1" in log


def test_sanitize_case_runs_on_the_cpu():
    proc = _run([sys.executable, "bench/sanitize_case.py", "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sanitize case done: fwd bwd ring" in proc.stdout


def test_decode_summary_puts_the_runs_of_a_shape_together(tmp_path):
    rows = tmp_path / "decode.jsonl"
    for run in ("first", "second"):
        proc = _run([sys.executable, "bench/bench_decode.py", "--cpu", "--impls", "ring",
                     "--batches", "1,4", "--budget", "0.02", "--run", run, "--out", str(rows)])
        assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run([sys.executable, "bench/bench_decode.py", "--summary-from", str(rows)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [(impl, b, run) for impl, b, run, *_ in lines] == [
        ("ring", "1", "first"), ("ring", "1", "second"), ("ring", "4", "first"),
        ("ring", "4", "second")]


def test_forward_variant_table_names_the_fastest_variant(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import tune_cuda_kernels as tune

    # variant "5" is 1.25x faster than "1" on every D=128 shape, "1" fastest at D=64
    rows = []
    for D, N, W in [(d, n, w) for d in tune.VARIANT_D for n in tune.VARIANT_N
                    for w in tune.VARIANT_W]:
        for variant, ms in (("1", 2.0), ("5", 1.6 if D == 128 else 2.2)):
            rows.append(dict(knob=f"SWAA_FWD_HOPPER={variant}", D=D, N=N, W=W, ms=ms,
                             tflops=100.0))
    tune.print_variant_table(rows, ["1", "5"])
    text = capsys.readouterr().out
    assert "D=128: speed-up over SWAA_FWD_HOPPER=1 (geometric mean): 1: 1.000x, 5: 1.250x; " \
           "fastest: 5" in text
    assert re.search(r"D=64: .*; fastest: 1$", text, re.M)


def test_decode4_parts_sweep_every_knob_combination_plain_first():
    # the decode step's decode4 parts: the sweep's variants (its speed-ups are over the first)
    # and the profile's --variant parsing, which gpu_check.sh's profile part relies on
    assert re.search(r"^decode4_parts\(\) \{", TEXT, re.M)
    # opt-in only (DECODE_AB=decode4): the default decode step must stay within one call's budget
    calls = re.findall(r"^ *(.*\n) *decode4_parts \"", TEXT, re.M)
    assert calls == ['if [[ ${DECODE_AB:-1} == decode4 ]]; then\n'], calls
    assert {"set", "batches", "rounds"} <= INVOCATIONS["bench/bench_decode_sweep.py"]
    assert {"batches", "variant"} <= INVOCATIONS["bench/profile_decode.py"]
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_decode_sweep as sweep
    import profile_decode

    variants = list(sweep.knob_variants())
    assert len(variants) == 8 and len({tuple(v.values()) for v in variants}) == 8
    assert variants[0] == {"loads": "serial", "advance": "op", "pdl": "0"}
    assert profile_decode.parse_variant("default") == {}
    assert profile_decode.parse_variant("SWAA_DECODE_ADVANCE=op,SWAA_DECODE_PDL=0") == {
        "SWAA_DECODE_ADVANCE": "op", "SWAA_DECODE_PDL": "0"}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        profile_decode.parse_variant("staged")
    # PDL is on unless SWAA_DECODE_PDL parses to 0 (as decode_env_int in csrc/cuda/ring.cu)
    assert [profile_decode.pdl_on(v) for v in (None, "1", "0", "00", "+0", " 0", "0 ", "2", "x")] == [
        True, True, False, False, False, False, True, True, True]
    for variant in re.findall(r"--variant (\S+)", TEXT):
        for name in profile_decode.parse_variant(variant):
            assert name in sweep.KNOBS, name


def test_profile_step_span_counts_overlapping_kernels_once():
    # profile_decode.py's step span (review_decode4 finding 4): under PDL the combine kernel's
    # record starts inside the split kernel's, so the span, not the sum, is the step's time
    sys.path.insert(0, str(ROOT / "bench"))
    import profile_decode

    steps = [[("split", 0.0, 37.0), ("combine", 2.0, 40.0)],          # PDL: overlapping
             [("split", 100.0, 138.0), ("combine", 139.5, 142.5)]]    # serial: a gap
    records = [r for step in reversed(steps) for r in reversed(step)]  # any order
    assert profile_decode.step_spans(records, 2) == [40.0, 42.5]
    with pytest.raises(ValueError, match="equal steps"):
        profile_decode.step_spans(records[:3], 2)
    with pytest.raises(ValueError, match="same kernels"):
        profile_decode.step_spans([("split", 0, 1), ("combine", 2, 3), ("add", 4, 5),
                                   ("split", 6, 7)], 2)
    name = "void swaa::(anonymous namespace)::ring_decode_combine_kernel<__nv_bfloat16, 128, true>"
    assert profile_decode.short_name(name) == "ring_decode_combine_kernel<__nv_bfloat16, 128, true>"


def test_every_hopper_forward_is_tuned_and_tested():
    """The forward knob's range in csrc/cuda/attention.cpp, the tuning part fwd-variants'
    default list and the Hopper test fixture's variants name the same kernels (session 15 found
    variant 9 missing from the tuning list), and the tests' DEFAULT_PATH is the C++ default's."""
    cpp = (ROOT / "csrc" / "cuda" / "attention.cpp").read_text()
    top = int(re.search(r"return v >= 0 && v <= (\d+) \? v : kFwdHopperDefault;", cpp).group(1))
    default = re.search(r"^constexpr int kFwdHopperDefault = (\d+);", cpp, re.M).group(1)
    body = cpp[cpp.index("const char* hopper_variant_name(int knob)"):]
    names = dict(re.findall(r'case (\d+): return "([^"]+)";', body[:body.index("\n}\n")]))
    knobs = [str(v) for v in range(1, top + 1)]
    assert set(names) == set(knobs) - {"1"}  # 1 is the switch's default: "sm90"

    tune = (ROOT / "bench" / "tune_cuda_kernels.py").read_text()
    listed = re.search(r'"--variants", nargs="\+", default=\[([^\]]*)\]', tune).group(1)
    assert re.findall(r'"(\d+)"', listed) == knobs

    hopper = (ROOT / "tests" / "test_attention_hopper.py").read_text()
    table = hopper[hopper.index("HOPPER_VARIANTS = {"):]
    fixture = dict(re.findall(r'"(\d+)": "(sm90[^"]*)"', table[:table.index("}")]))
    assert fixture == {"1": "sm90", **names}
    assert re.search(r'^DEFAULT_PATH = HOPPER_VARIANTS\["(\d+)"\]', hopper, re.M).group(1) == default
    assert re.search(r'^DEFAULT_TEST_VARIANTS = "([\d,]+)"', hopper, re.M).group(1) == ",".join(knobs)

    cuda_tests = (ROOT / "tests" / "test_attention_cuda.py").read_text()
    table = cuda_tests[cuda_tests.index("_HOPPER_KNOB = {"):]
    by_name = dict(re.findall(r'"(sm90[^"]*)": "(\d+)"', table[:table.index("}")]))
    assert by_name == {name: knob for knob, name in fixture.items()}
    # its fixture's default runs every variant of that table (session 15: variant 10 was
    # in the table but not in a hand-written default list, so its cases skipped)
    assert 'os.environ.get("SWAA_TEST_HOPPER_VARIANTS", ",".join(["0", *_HOPPER_KNOB.values()]))' \
        in cuda_tests
