#!/usr/bin/env python3
"""The installed texts agree with their sources (issue 20): qvisor(1) with
every --help of the built binary, qvisor-config(5) with config.example.yaml,
the tmpfiles.d entry and the unit with the daemon's defaults.  Parses the
help texts and the example on its own (not with contrib/gendoc.py), so a
generator that drops a verb, an option or a key fails here.

Arguments: QVISOR MAN1 MAN5 COMPLETION TMPFILES UNIT (build outputs)."""

import os
import re
import shutil
import subprocess
import sys
import unittest

QVISOR, MAN1, MAN5, COMPLETION, TMPFILES, UNIT = sys.argv[1:7]
del sys.argv[1:7]
SOURCE = os.environ.get("QVISOR_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))


def help_of(*words):
    p = subprocess.run([QVISOR, *words, "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, (words, p.stderr)
    return p.stdout


def names_under(text, heading):
    out = []
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    for line in lines[start + 1:]:
        if not line.strip():
            break
        out.append(line.split()[0])
    return out


def option_tokens(text):
    """Every option an option line of a help text names."""
    toks = set()
    for line in text.splitlines():
        if re.match(r"^ {1,8}-[-a-zA-Z]", line):
            term = re.split(r"\s{2,}", line.strip())[0]
            toks.update(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])", term))
    return toks


def plain(roff):
    """man(7) source as the words a reader sees."""
    s = re.sub(r"\\\[u([0-9A-F]{4})\]", lambda m: chr(int(m.group(1), 16)), roff)
    s = s.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")
    return re.sub(r"\\f[BIRP]", "", s)


def sections(roff, macro):
    """{heading: text up to the next heading of that macro or a higher one}."""
    out, name, buf = {}, None, []
    for line in roff.splitlines():
        m = re.match(r"^\.(SH|SS) \"?(.*?)\"?$", line)
        if m and (m.group(1) == macro or m.group(1) == "SH"):
            if name is not None:
                out[name] = "\n".join(buf)
            name, buf = (plain(m.group(2)) if m.group(1) == macro else None), []
            continue
        buf.append(line)
    if name is not None:
        out[name] = "\n".join(buf)
    return out


def example_keys(path):
    """(dotted key, value or None) of every key in config.example.yaml."""
    keys, stack = [], []
    with open(path) as f:
        for line in f:
            m = re.match(r"^( *)([a-z_][a-z0-9_]*):\s*(.*?)\s*$", line)
            if not m:
                continue
            depth = len(m.group(1)) // 2
            stack = stack[:depth] + [m.group(2)]
            keys.append((".".join(stack), m.group(3) or None))
    return keys


class ManPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(MAN1) as f:
            cls.man1 = f.read()
        cls.main = help_of()
        cls.ss = {k: plain(v) for k, v in sections(cls.man1, "SS").items()}
        cls.sh = {k: plain(v) for k, v in sections(cls.man1, "SH").items()}

    def test_every_command_has_its_section_with_its_options(self):
        tops = names_under(self.main, "Commands:")
        self.assertIn("daemon", tops)
        for v in tops:
            self.assertIn(f"qvisor {v}", self.ss, f"qvisor(1) has no section for `qvisor {v}`")
            for opt in option_tokens(help_of(v)):
                self.assertRegex(self.ss[f"qvisor {v}"], rf"(?<![\w-]){re.escape(opt)}(?![\w-])",
                                 f"qvisor(1), qvisor {v}: {opt} is missing")

    def test_every_noun_has_a_section_and_every_verb_its_options(self):
        nouns = names_under(self.main, "Nouns")
        self.assertIn("vm", nouns)
        n_opts = 0
        for n in nouns:
            self.assertIn(f"{n.upper()} COMMANDS", self.sh, f"qvisor(1) has no section for the noun {n}")
            for v in names_under(help_of(n), "Verbs:"):
                key = f"qvisor {n} {v}"
                self.assertIn(key, self.ss, f"qvisor(1) has no section for `{key}`")
                self.assertIn(key, self.sh[f"{n.upper()} COMMANDS"] + "\n".join(
                    k for k in self.ss if k.startswith(f"qvisor {n} ")))
                for opt in option_tokens(help_of(n, v)):
                    n_opts += 1
                    self.assertRegex(self.ss[key], rf"(?<![\w-]){re.escape(opt)}(?![\w-])",
                                     f"qvisor(1), {key}: {opt} is missing")
        self.assertGreater(n_opts, 50)  # the parser above found the options

    def test_global_options_and_exit_codes(self):
        opts = option_tokens(self.main.split("Commands:")[0])
        self.assertIn("--request-timeout", opts)
        for opt in opts:
            self.assertRegex(self.sh["OPTIONS"], rf"(?<![\w-]){re.escape(opt)}(?![\w-])")
        codes = re.findall(r"^ {1,3}(\d+)  ", self.main.split("Exit codes:")[1], re.M)
        self.assertIn("78", codes)
        for code in codes:
            self.assertRegex(self.sh["EXIT STATUS"], rf"(?m)^\.B {code}$")

    def test_every_help_text_is_there_whole(self):
        # not only the option names: every word of every help after its
        # usage lines, in order (the page wraps and marks it up differently)
        def words(text):
            return " ".join(text.split())
        helps = {f"qvisor {v}": help_of(v) for v in names_under(self.main, "Commands:")}
        for n in names_under(self.main, "Nouns"):
            helps.update({f"qvisor {n} {v}": help_of(n, v) for v in names_under(help_of(n), "Verbs:")})
        for key, text in helps.items():
            body = text.split("\n\n", 1)[1]
            page = "\n".join(re.sub(r"^\.B ", "", line) for line in self.ss[key].splitlines()
                             if not re.match(r"^\.(PP|TP|nf|fi|br)$", line))
            self.assertIn(words(body), words(page), f"qvisor(1), {key}: the help text differs")


class ConfigPage(unittest.TestCase):
    def test_every_key_of_the_example_with_its_default(self):
        with open(MAN5) as f:
            page = plain(f.read())
        keys = example_keys(os.path.join(SOURCE, "config.example.yaml"))
        self.assertIn(("paths.state_dir", "/var/lib/qvisor"), keys)
        for key, value in keys:
            if "." not in key and value is None:  # a section
                self.assertIn(f'.SH "{key.upper()}"', page)
                continue
            self.assertRegex(page, rf"(?m)^\.B {re.escape(key)}$", f"qvisor-config(5) lacks {key}")
            if value is not None:
                self.assertRegex(page, rf"(?m)^\.B {re.escape(key)}\nDefault: {re.escape(value)}$",
                                 f"qvisor-config(5): {key} without its default {value}")


class Render(unittest.TestCase):
    def test_groff_renders_without_warnings(self):
        if not shutil.which("groff"):
            self.skipTest("no groff")
        for page in (MAN1, MAN5):
            p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True, text=True)
            self.assertEqual((p.returncode, p.stderr), (0, ""), page)


class Installed(unittest.TestCase):
    def test_tmpfiles_are_the_daemon_directories_at_the_defaults(self):
        keys = dict(example_keys(os.path.join(SOURCE, "config.example.yaml")))
        with open(TMPFILES) as f:
            entries = [line.split() for line in f if line.strip() and not line.startswith("#")]
        want = {keys["paths.run_dir"]: "0755", keys["paths.state_dir"]: "0750",
                keys["paths.images_dir"]: "0750", keys["paths.instances_dir"]: "0750"}
        self.assertEqual({e[1]: e[2] for e in entries}, want)
        self.assertTrue(all(e[0] == "d" and e[3:5] == ["root", "root"] for e in entries))

    def test_unit_runs_this_binary_and_leaves_vms_alone(self):
        with open(UNIT) as f:
            unit = f.read()
        self.assertRegex(unit, r"(?m)^ExecStart=/\S*/qvisor daemon$")
        self.assertIn("\nKillMode=process\n", unit)
        self.assertIn("\nType=notify\n", unit)

    def test_completion_is_valid_bash_with_every_noun(self):
        p = subprocess.run(["bash", "-n", COMPLETION], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(COMPLETION) as f:
            text = f.read()
        for n in names_under(help_of(), "Nouns"):
            self.assertRegex(text, rf"\[{n}\]='[a-z ]+'")


if __name__ == "__main__":
    unittest.main(verbosity=2)
