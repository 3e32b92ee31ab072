#!/usr/bin/env python3
"""Generates what is installed besides the binary from the two texts a user
already reads, so that neither can drift from it (issue 20):

  gendoc.py man1 QVISOR VERSION OUT      qvisor(1) from `qvisor --help`, every
                                         `qvisor NOUN --help` and every verb's
                                         `--help`, run on the built binary
  gendoc.py man5 CONFIG VERSION OUT      qvisor-config(5) from
                                         config.example.yaml and its comments
  gendoc.py bash QVISOR OUT              the bash completion: nouns, verbs and
                                         options from the same help texts

Nothing here knows a verb or an option: a new one appears in the page and
the completion at the next build.  test/unit/test_docs.py checks the
results against the help texts and the example config."""

import re
import subprocess
import sys

# ---- the help texts -------------------------------------------------------


def run_help(qvisor, *words):
    p = subprocess.run([qvisor, *words, "--help"], capture_output=True, text=True,
                       env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}, timeout=30)
    if p.returncode != 0:
        sys.exit(f"gendoc: {' '.join(['qvisor', *words, '--help'])} exited {p.returncode}: {p.stderr}")
    return p.stdout


def listing(text, heading):
    """NAME -> summary of the two-column list under a line starting with heading."""
    out = {}
    on = False
    for line in text.splitlines():
        if line.startswith(heading):
            on = True
            continue
        if on:
            if not line.strip():
                break
            m = re.match(r"^  (\S+)\s+(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


OPTION_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def options_of(help_text):
    """The options a help text lists: tokens at the start of its option
    lines (an indented line that starts with '-'), with whether they take a
    value (the next word after the long name is uppercase or a choice)."""
    opts = {}
    for line in help_text.splitlines():
        m = re.match(r"^ {1,8}(-[^ ].*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        parts = [p.split(None, 1) for p in re.split(r",\s*(?=-)", m.group(1))]
        takes = len(parts[-1]) > 1  # "-t, --timeout TIME": both take TIME
        for words in parts:
            if words and OPTION_RE.fullmatch(words[0]):
                opts[words[0]] = takes
    return opts


class Tree:
    """The command as its help texts describe it."""

    def __init__(self, qvisor):
        self.main = run_help(qvisor)
        self.top = listing(self.main, "Commands:")
        self.nouns = listing(self.main, "Nouns")
        self.top_help = {v: run_help(qvisor, v) for v in self.top}
        self.noun_help = {n: run_help(qvisor, n) for n in self.nouns}
        self.verbs = {n: listing(self.noun_help[n], "Verbs:") for n in self.nouns}
        self.verb_help = {(n, v): run_help(qvisor, n, v) for n in self.nouns for v in self.verbs[n]}


# ---- roff -----------------------------------------------------------------


def esc(s):
    s = s.replace("\\", "\\e").replace("-", "\\-")
    s = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in s)
    if s.startswith((".", "'")):
        s = "\\&" + s
    return s


def roff_help_body(text, out, skip_usage=True):
    """A help text as man(7): column-0 prose filled, option lines as tagged
    paragraphs, other indented blocks kept as they are."""
    lines = text.rstrip("\n").split("\n")
    i = 0
    if skip_usage and lines and lines[0].startswith("Usage:"):
        # the usage lines (and their indented continuations) are the synopsis
        syn = []
        while i < len(lines) and lines[i].strip() and (i == 0 or lines[i].startswith(" ") or
                                                          lines[i].startswith("Usage:") or
                                                          lines[i].startswith("       ")):
            syn.append(re.sub(r"^(Usage:|      ) ", "", lines[i]))
            i += 1
        out.append(".PP")
        out.append(".nf")
        out.extend(esc(s.strip()) if not s.startswith("  ") else esc(s) for s in syn)
        out.append(".fi")
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.extend(esc(p) for p in para)
            para.clear()

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
            continue
        # a tagged paragraph: an option ("  -t, --timeout TIME   text") or
        # an exit code ("  69  text"), continued by deeper lines
        m = re.match(r"^( {1,8})(-\S.*?)(?:\s{2,}(\S.*))?$", line) or \
            re.match(r"^( {1,4})(\d{1,3})(?:\s{2,}(\S.*))$", line)
        if m and not line.lstrip().startswith("- "):
            flush()
            # continuation lines start right of the term's start: past "-x, "
            # for an option, past the number for an exit code
            deeper = len(m.group(1)) + (len(m.group(2)) if m.group(2).isdigit() else 4)
            desc = []
            i += 1
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > deeper:
                desc.append(lines[i])
                i += 1
            term, first = m.group(2), m.group(3)
            if desc:
                # the description starts in the column its continuation
                # lines start in, even when one space separates it
                col = len(desc[0]) - len(desc[0].lstrip())
                if len(line) > col and line[col - 1] == " " and line[col] != " ":
                    term, first = line[:col].strip(), line[col:]
            if first:
                desc.insert(0, first)
            out.append(".TP")
            out.append(".B " + esc(term))
            if any(re.search(r"\S\s{3,}\S", d.strip()) for d in desc):
                # a table inside the description: keep its columns
                base = min(len(d) - len(d.lstrip()) for d in desc[1:]) if len(desc) > 1 else 0
                out.append(esc(desc[0].strip()) if desc else "")
                out.append(".nf")
                out.extend(esc(d[base:]) for d in desc[1:])
                out.append(".fi")
            else:
                out.extend(esc(d.strip()) for d in desc)
            continue
        if line.startswith(" "):
            flush()
            block = []
            while i < len(lines) and lines[i].startswith(" ") and lines[i].strip():
                block.append(lines[i])
                i += 1
            base = min(len(b) - len(b.lstrip()) for b in block)
            out.append(".PP")
            out.append(".nf")
            out.extend(esc(b[base:]) for b in block)
            out.append(".fi")
            continue
        para.append(line)
        i += 1
    flush()


def man1(qvisor, version, path):
    t = Tree(qvisor)
    out = [f'.TH QVISOR 1 "" "qvisor {esc(version)}" "qvisor manual"',
           ".SH NAME",
           "qvisor \\- supervise QEMU/KVM virtual machines on this node",
           ".SH SYNOPSIS",
           ".B qvisor",
           "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
           ".br",
           ".B qvisor",
           "[\\fIOPTIONS\\fR] \\fINOUN VERB\\fR [\\fIARGS\\fR]",
           ".SH DESCRIPTION"]
    main = t.main.split("\n")
    # the text between the usage and "Options:"
    desc = "\n".join(main[main.index("") + 1:main.index("Options:")])
    roff_help_body(desc, out, skip_usage=False)
    out.append(".PP")
    out.append("Every command prints its own help with \\fB\\-\\-help\\fR; this page is made of those texts.")
    out.append(".SH OPTIONS")
    opts = t.main[t.main.index("Options:") + len("Options:\n"):t.main.index("\nCommands:")]
    roff_help_body(opts, out, skip_usage=False)
    out.append(".SH COMMANDS")
    for v, summary in t.top.items():
        out.append(f".SS {esc('qvisor ' + v)}")
        out.append(esc(summary) + ".")
        roff_help_body(t.top_help[v], out)
    for n, summary in t.nouns.items():
        out.append(f'.SH "{esc(n.upper())} COMMANDS"')
        out.append(esc(summary[0].upper() + summary[1:]) + ".")
        for v, vsum in t.verbs[n].items():
            out.append(f".SS {esc(f'qvisor {n} {v}')}")
            out.append(esc(vsum) + ".")
            roff_help_body(t.verb_help[(n, v)], out)
    out.append(".SH EXIT STATUS")
    codes = t.main[t.main.index("Exit codes:\n") + len("Exit codes:\n"):]
    roff_help_body(codes, out, skip_usage=False)
    out += [".SH FILES",
            ".TP",
            ".I /etc/qvisor/config.yaml",
            "the node config, see \\fBqvisor\\-config\\fR(5)",
            ".TP",
            ".I /var/lib/qvisor",
            "base images and one directory per VM (its disk, seed, logs and state)",
            ".TP",
            ".I /run/qvisor",
            "the control socket, the daemon's lock and the VMs' sockets",
            ".SH SEE ALSO",
            "\\fBqvisor\\-config\\fR(5), \\fBqemu\\-system\\-x86_64\\fR(1), \\fBqemu\\-img\\fR(1),"
            " \\fBsystemctl\\fR(1)",
            ".PP",
            "/usr/share/doc/qvisor/README.md"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---- qvisor-config(5) -----------------------------------------------------


def parse_example(path):
    """config.example.yaml as (header comment lines, items): each item is
    (dotted key, depth, value or None for a mapping, its comment lines)."""
    header, items, comment, stack = [], [], [], []
    seen_key = False
    with open(path) as f:
        lines = f.read().split("\n")
    for line in lines:
        if not line.strip():
            if not seen_key and comment:
                header.extend(comment + [""])
                comment = []
            elif comment:
                comment.append("")
            continue
        m = re.match(r"^(\s*)#(.*)$", line)
        if m:
            comment.append(m.group(2)[1:] if m.group(2).startswith(" ") else m.group(2))
            continue
        m = re.match(r"^(\s*)([a-z_][a-z0-9_]*):\s*(.*)$", line)
        if not m:
            sys.exit(f"gendoc: {path}: cannot read line: {line!r}")
        seen_key = True
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        while comment and comment[-1] == "":
            comment.pop()
        items.append((".".join(stack), depth, m.group(3) if m.group(3) else None, comment))
        comment = []
    while header and header[-1] == "":
        header.pop()
    return header, items


def roff_comment(lines, out):
    """Comment lines as text: lines indented by two or more spaces (examples)
    kept as they are, the rest filled."""
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            out.append(".PP")
            i += 1
            continue
        if lines[i].startswith("  "):
            out.append(".nf")
            while i < len(lines) and lines[i].startswith("  "):
                out.append(esc(lines[i]))
                i += 1
            out.append(".fi")
            continue
        out.append(esc(lines[i]))
        i += 1


def man5(config, version, path):
    header, items = parse_example(config)
    out = [f'.TH QVISOR\\-CONFIG 5 "" "qvisor {esc(version)}" "qvisor manual"',
           ".SH NAME",
           "qvisor\\-config \\- the node configuration of qvisor, /etc/qvisor/config.yaml",
           ".SH DESCRIPTION"]
    roff_comment(header[1:] if header and header[0].startswith("qvisor node configuration") else header, out)
    out.append(".PP")
    out.append("Keys are written here by their full name (\\fBpaths.state_dir\\fR is \\fBstate_dir\\fR"
               " under \\fBpaths\\fR); the default follows each.")
    section = None
    for key, depth, value, comment in items:
        top = key.split(".")[0]
        if depth == 0 and (value is None or section is None):
            if value is None:
                out.append(f'.SH "{esc(top.upper())}"')
                section = top
                if comment:
                    roff_comment(comment, out)
                out.append(".PP")
                out.append(f"Section \\fB{esc(top)}\\fR.")
                continue
            if section is None:
                out.append('.SH "TOP-LEVEL KEYS"')
                section = ""
        if value is None:  # a mapping inside a section (a pool)
            out.append(".TP")
            out.append(f".B {esc(key)}")
            if comment:
                roff_comment(comment, out)
            else:
                out.append("a mapping of the keys below")
            continue
        out.append(".TP")
        out.append(f".B {esc(key)}")
        out.append(f"Default: \\fB{esc(value)}\\fR")
        if comment:
            out.append(".br")
            roff_comment(comment, out)
    out += [".SH FILES",
            ".TP",
            ".I /etc/qvisor/config.yaml",
            "the config \\fBqvisor\\fR and its daemon read unless \\fB\\-\\-config\\fR names another",
            ".TP",
            ".I /usr/share/doc/qvisor/config.example.yaml",
            "this page's source: every key with its default",
            ".SH SEE ALSO",
            "\\fBqvisor\\fR(1)"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---- bash completion ------------------------------------------------------

BASH = r'''# bash completion for qvisor, generated by contrib/gendoc.py from the
# help texts of qvisor @VERSION@.  VM and image names are asked of the
# daemon (the config and socket named on the command line), silently and
# for at most 2 seconds; without a daemon there are none.

_qvisor_nouns='@NOUNS@'
_qvisor_top='@TOP@'
_qvisor_global_opts='@GLOBAL_OPTS@'
_qvisor_global_args='@GLOBAL_ARGS@'
declare -gA _qvisor_verbs=(@VERBS@)
declare -gA _qvisor_opts=(@OPTS@)
declare -gA _qvisor_args=(@ARGS@)

_qvisor_names() { # what: vm | image; the words of the command line: "$@"
    local what=$1 i
    shift
    local -a conn=()
    for ((i = 1; i < $#; i++)); do
        case ${!i} in
        -c | --config | -s | --socket)
            local j=$((i + 1))
            conn+=("${!i}" "${!j}")
            ;;
        --config=* | --socket=*) conn+=("${!i}") ;;
        esac
    done
    "${_qvisor_cmd:-qvisor}" "${conn[@]}" --request-timeout 2s -q "$what" list --names 2>/dev/null </dev/null
}

_qvisor_takes_value() { # key ("" before the command), option
    local args=" $_qvisor_global_args "
    [ -n "$1" ] && args=" ${_qvisor_args[$1]:-} "
    [[ $args == *" $2 "* ]]
}

_qvisor() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    local _qvisor_cmd=${COMP_WORDS[0]}
    local i word noun='' verb='' nargs=0
    COMPREPLY=()
    # the first words that are not options (or their values) are the command
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
        -*)
            [[ $word != *=* ]] && _qvisor_takes_value "${noun:+$noun }$verb" "$word" && ((i++))
            ;;
        *)
            if [ -z "$noun" ] && [ -z "$verb" ]; then
                if [[ " $_qvisor_nouns " == *" $word "* ]]; then noun=$word; else verb=$word; fi
            elif [ -n "$noun" ] && [ -z "$verb" ]; then
                verb=$word
            else
                ((nargs++))
            fi
            ;;
        esac
    done
    local key=${noun:+$noun }$verb
    # the value of an option: files where it names a path, else nothing
    if [[ $prev == -* ]]; then
        if _qvisor_takes_value "$key" "$prev"; then
            case $prev in
            --image | -i)
                mapfile -t COMPREPLY < <(compgen -W "$(_qvisor_names image "${COMP_WORDS[@]:0:COMP_CWORD}")" -- "$cur")
                ;;
            --restart) mapfile -t COMPREPLY < <(compgen -W "never on-failure always" -- "$cur") ;;
            --firmware) mapfile -t COMPREPLY < <(compgen -W "bios uefi uefi-secure" -- "$cur") ;;
            --for) mapfile -t COMPREPLY < <(compgen -W "running stopped crashed agent" -- "$cur") ;;
            --need) mapfile -t COMPREPLY < <(compgen -W "kvm vfio hugepages uefi" -- "$cur") ;;
            --vm) mapfile -t COMPREPLY < <(compgen -W "$(_qvisor_names vm "${COMP_WORDS[@]:0:COMP_CWORD}")" -- "$cur") ;;
            *) mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
            esac
            return 0
        fi
    fi
    if [[ $cur == -* ]]; then
        if [ -z "$noun$verb" ]; then
            mapfile -t COMPREPLY < <(compgen -W "$_qvisor_global_opts" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "${_qvisor_opts[$key]:-}" -- "$cur")
        fi
        return 0
    fi
    if [ -z "$noun$verb" ]; then
        mapfile -t COMPREPLY < <(compgen -W "$_qvisor_nouns $_qvisor_top" -- "$cur")
        return 0
    fi
    if [ -n "$noun" ] && [ -z "$verb" ]; then
        mapfile -t COMPREPLY < <(compgen -W "${_qvisor_verbs[$noun]}" -- "$cur")
        return 0
    fi
    # arguments: the VM or image a verb acts on
    case $key in
    "vm create" | "vm list" | "image list" | "image import") ;;
    vm\ *)
        ((nargs == 0)) && mapfile -t COMPREPLY < <(compgen -W "$(_qvisor_names vm "${COMP_WORDS[@]:0:COMP_CWORD}")" -- "$cur")
        ;;
    "image rm")
        ((nargs == 0)) && mapfile -t COMPREPLY < <(compgen -W "$(_qvisor_names image "${COMP_WORDS[@]:0:COMP_CWORD}")" -- "$cur")
        ;;
    esac
    [ "$key" = "image import" ] && mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    [ "$key" = "config check" ] && mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    return 0
}
complete -F _qvisor qvisor
'''


def bash(qvisor, path):
    t = Tree(qvisor)
    gopts = options_of(t.main[t.main.index("Options:"):t.main.index("\nCommands:")])

    def q(s):
        return "'" + s.replace("'", "'\\''") + "'"

    verbs = " ".join(f"[{n}]={q(' '.join(t.verbs[n]))}" for n in t.nouns)
    opts, args = [], []
    helps = {v: t.top_help[v] for v in t.top}
    helps.update({f"{n} {v}": h for (n, v), h in t.verb_help.items()})
    for key, h in helps.items():
        o = options_of(h)
        opts.append(f"[{q(key)}]={q(' '.join(sorted(o)))}")
        args.append(f"[{q(key)}]={q(' '.join(sorted(k for k, takes in o.items() if takes)))}")
    text = (BASH.replace("@NOUNS@", " ".join(t.nouns))
            .replace("@TOP@", " ".join(t.top))
            .replace("@GLOBAL_OPTS@", " ".join(sorted(gopts)))
            .replace("@GLOBAL_ARGS@", " ".join(sorted(k for k, takes in gopts.items() if takes)))
            .replace("@VERBS@", verbs)
            .replace("@OPTS@", " ".join(opts))
            .replace("@ARGS@", " ".join(args))
            .replace("@VERSION@", run_version(qvisor)))
    with open(path, "w") as f:
        f.write(text)


def run_version(qvisor):
    return subprocess.run([qvisor, "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]


def main(argv):
    if len(argv) == 5 and argv[1] == "man1":
        man1(argv[2], argv[3], argv[4])
    elif len(argv) == 5 and argv[1] == "man5":
        man5(argv[2], argv[3], argv[4])
    elif len(argv) == 4 and argv[1] == "bash":
        bash(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
