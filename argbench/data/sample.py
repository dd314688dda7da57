"""A small deterministic synthetic corpus in the counterargs-18 layout.

Tests, and the embedded default run when no real corpus is configured, need a corpus that is tiny (a tiny model
trains an epoch on CPU in seconds), identical on every machine, and shaped exactly like counterargs-18::

    <root>/{training,validation,test}/<theme>/<debate>/{pro,con}/{pro|con}NN{a|b}-{point|counter}.txt

NN has two digits and starts at 01; ``a`` is the point, ``b`` its counter. A point is its title (conclusion), a
blank line, then premise sentences; a counter has no title. Every text is 30-80 words; no file is empty.

Sizes (seed 0): 3 themes; 20 training, 6 validation and 6 test debates spread round-robin over the themes; each
debate has both stances with 3-5 pairs per stance (the real corpus's ~3.9 counters per stance), about 165
training pairs. Training alone holds exactly one point without a counter, so loaders exercise that rule.

Copies, as counterargs-18 has them (see argbench.data.copies), so that decontamination, copy-aware mining and the
dedup and unseen views have something to do:

* one training debate (the first without the unpaired point) is also filed in test, under the next theme and with
  its folder name prefixed ``p-`` (the real corpus's ``training/science/censorship-…`` and
  ``test/digital-freedoms/p-…``): test gets a 7th debate whose every pair also occurs in training;
* in training and in test, one argument pair (the first pro pair of one debate) is reused in a second debate of
  the same theme, replacing that debate's last pro pair: each of the two splits holds one pair of text-identical
  pairs (a point and a counter with a twin, and a query with a copy of itself in its sta and epa pools).

The signal is learnable but not trivial. A vocabulary of made-up pronounceable words holds *concepts*, each with
two synonymous surface forms. A point is about 4 aspect concepts (distinct from every other pair's within its
debate); its counter reuses 2-3 of them in rebuttal phrasing ("This ignores that...", "On the contrary, ...", "The
claim about X overlooks..."), each in the point's own form or (30 %) its synonym, plus one fresh concept of its
own. All arguments of a debate share its topic words, all of a theme share theme words. Lexical overlap of
aspect words therefore finds the counter most of the time (TF-IDF acc@1 ~0.7-0.8 on seed 0) but not always: topic
and theme words recur a varying number of times per text and add noise, and synonyms are invisible to it. A trained
model can learn to weigh aspect words over topic words and, from training pairs (concepts recur across debates and
splits), which forms are synonyms.

Randomness is ``random.Random(seed)`` only (no numpy, no set iteration), so output is byte-identical across runs
and machines. Bump ``SAMPLE_VERSION`` whenever the output changes: it names the cache folder.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

SAMPLE_VERSION = 2
SPLIT_DEBATES = {"training": 20, "validation": 6, "test": 6}
THEMES = ("civics", "ecology", "commerce")
PAIRS_PER_STANCE = (3, 5)  # inclusive range
N_CONCEPTS = 120
FORMS_PER_CONCEPT = 2
ASPECTS_PER_POINT = 4
REUSED_BY_COUNTER = (2, 3)  # inclusive range
P_SAME_FORM = 0.7  # chance the counter repeats the point's word rather than its synonym
THEME_WORDS = 3

# Sentence templates: "{}" is an aspect word, {t} the debate's topic, {h} a theme word. None starts with "{}" so
# capitalisation never depends on the filled word.
_TITLES = {
    "pro": ("The {t} would protect the {}", "Backing the {t} strengthens the {}",
            "The {t} is the best way to secure the {}"),
    "con": ("The {t} would damage the {}", "Rejecting the {t} preserves the {}", "The {t} puts the {} at serious risk"),
}
_PREMISES = (
    "Anyone who has studied the {t} knows that the {} matters more than any slogan about {h}.",
    "When the {} is neglected, the {} suffers and the wider {h} community pays the price.",
    "Evidence from several {h} programmes shows that the {} and the {} rise and fall together.",
    "Any serious plan for the {t} must therefore begin with the {}.",
    "Ordinary people feel the {} directly, long before experts in {h} write about it.",
    "Without real attention to the {}, the promise of the {t} would ring hollow.",
)
_REBUTTAL_OPENERS = (
    "This ignores that the {} rarely depends on the {t} at all.",
    "On the contrary, the {} tends to weaken whenever {h} budgets grow.",
    "The claim about the {} overlooks how the {} shapes every debate on {h}.",
)
_REBUTTALS = (
    "In practice the {} has improved in places that never touched the {t}.",
    "Even granting the point about the {}, the {h} record shows the opposite.",
    "What really drives the {} is the {}, which the {t} leaves untouched.",
    "Nobody working in {h} would accept that the {} follows from the {t}.",
)
_DEBATE_VERBS = ("ban", "fund", "protect", "limit", "expand", "tax", "regulate", "reform")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai")
_CODAS = ("", "", "n", "r", "l", "s", "m")


def default_cache_dir() -> Path:
    """``$ARGBENCH_CACHE`` if set and non-empty, else ``~/.cache/argbench``."""
    env = os.environ.get("ARGBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "argbench"


def sample_root(cache_dir: Path | None = None) -> Path:
    """Path of the cached seed-0 sample, ``<cache_dir>/sample-v{SAMPLE_VERSION}``, generated on first use.

    Safe under concurrent callers: each generates into its own temp folder and the losing rename is discarded.
    """
    dest = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"sample-v{SAMPLE_VERSION}"
    if not dest.is_dir():
        try:
            generate_sample(dest)
        except FileExistsError:
            if not dest.is_dir():
                raise
    return dest


def generate_sample(dest: Path, seed: int = 0) -> Path:
    """Write the sample corpus for ``seed`` into ``dest`` (which must not exist yet) and return ``dest``.

    Files are written into a temp sibling folder that is renamed onto ``dest`` at the end, so ``dest`` either does
    not exist or holds the whole corpus. Raises FileExistsError if ``dest`` exists before or at the rename.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"sample destination {dest} already exists; expected a path that does not exist yet")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for rel, text in corpus_files(seed).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache may be shared
        try:
            os.rename(tmp, dest)
        except OSError as err:
            if dest.is_dir():  # another process finished first
                raise FileExistsError(f"sample destination {dest} was created concurrently") from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def corpus_files(seed: int = 0) -> dict[str, str]:
    """All files of the sample as {relative posix path: text}, in generation order."""
    rng = random.Random(seed)
    n_debates = sum(SPLIT_DEBATES.values())
    words = _made_up_words(rng, N_CONCEPTS * FORMS_PER_CONCEPT + len(THEMES) * THEME_WORDS + 2 * n_debates)
    n_forms = N_CONCEPTS * FORMS_PER_CONCEPT
    concepts = [tuple(words[i:i + FORMS_PER_CONCEPT]) for i in range(0, n_forms, FORMS_PER_CONCEPT)]
    rest = words[n_forms:]
    theme_words = {theme: rest[i * THEME_WORDS:(i + 1) * THEME_WORDS] for i, theme in enumerate(THEMES)}
    topic_words = iter(rest[len(THEMES) * THEME_WORDS:])
    unpaired_debate = rng.randrange(SPLIT_DEBATES["training"])
    files: dict[str, str] = {}
    folders: dict[str, list[str]] = {}  # split -> "<theme>/<debate>" of each generated debate, in order
    for split, count in SPLIT_DEBATES.items():
        for d in range(count):
            theme = THEMES[d % len(THEMES)]
            topic = (next(topic_words), next(topic_words))
            name = f"house-would-{rng.choice(_DEBATE_VERBS)}-the-{topic[0]}-{topic[1]}"
            unpaired = split == "training" and d == unpaired_debate
            debate = _debate(rng, concepts, " ".join(topic), theme_words[theme], unpaired)
            files.update({f"{split}/{theme}/{name}/{rel}": text for rel, text in debate.items()})
            folders.setdefault(split, []).append(f"{theme}/{name}")
    return {**files, **_copies(files, folders, unpaired_debate)}


def _copies(files: dict[str, str], folders: dict[str, list[str]], unpaired_debate: int) -> dict[str, str]:
    """The copied files (see the module docstring); no randomness, so the generated debates stay as they were."""
    out: dict[str, str] = {}
    leaked = next(d for d in range(len(folders["training"])) if d != unpaired_debate)
    theme, name = folders["training"][leaked].split("/")
    refiled = f"test/{THEMES[(THEMES.index(theme) + 1) % len(THEMES)]}/p-{name}"
    prefix = f"training/{theme}/{name}/"
    out.update({refiled + "/" + rel.removeprefix(prefix): text for rel, text in files.items()
                if rel.startswith(prefix)})
    for split, skip in (("training", {leaked, unpaired_debate}), ("test", set())):
        eligible = [d for d in range(len(folders[split])) if d not in skip]
        source = eligible[0]
        target = next(d for d in eligible if d != source and d % len(THEMES) == source % len(THEMES))
        source_dir, target_dir = (f"{split}/{folders[split][d]}/pro" for d in (source, target))
        last = max(int(rel[len(target_dir) + 4:][:2]) for rel in files if rel.startswith(target_dir + "/"))
        for letter, kind in (("a", "point"), ("b", "counter")):
            out[f"{target_dir}/pro{last:02d}{letter}-{kind}.txt"] = files[f"{source_dir}/pro01{letter}-{kind}.txt"]
    return out


def _made_up_words(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct pronounceable lowercase non-words (two syllables, short so texts fit 64-128 tokens)."""
    taken = {w.strip(".,{}").lower() for tpl in (*_PREMISES, *_REBUTTAL_OPENERS, *_REBUTTALS) for w in tpl.split()}
    words: list[str] = []
    while len(words) < n:
        syllables = (rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2))
        word = "".join(syllables) + rng.choice(_CODAS)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _debate(rng: random.Random, concepts: list[tuple[str, ...]], topic: str, themes: list[str],
            with_unpaired: bool) -> dict[str, str]:
    """One debate's files {"<stance>/<file>": text}; ``with_unpaired`` adds one con point without counter."""
    counts = {stance: rng.randint(*PAIRS_PER_STANCE) for stance in ("pro", "con")}
    n_points = counts["pro"] + counts["con"] + with_unpaired
    # Point aspects plus the counter's own fresh concept, all distinct within the debate.
    picked = rng.sample(range(N_CONCEPTS), n_points * (ASPECTS_PER_POINT + 1))
    groups = iter([picked[i:i + ASPECTS_PER_POINT + 1] for i in range(0, len(picked), ASPECTS_PER_POINT + 1)])
    files: dict[str, str] = {}
    for stance, n in counts.items():
        n_here = n + (with_unpaired and stance == "con")
        for number in range(1, n_here + 1):
            *aspects, fresh = [concepts[c] for c in next(groups)]
            point_words = [rng.choice(forms) for forms in aspects]
            stem = f"{stance}/{stance}{number:02d}"
            files[f"{stem}a-point.txt"] = _point_text(rng, stance, point_words, topic, themes)
            if number <= n:
                counter_words = _counter_words(rng, aspects, point_words, fresh)
                files[f"{stem}b-counter.txt"] = _counter_text(rng, counter_words, topic, themes)
    return files


def _counter_words(rng: random.Random, aspects: list[tuple[str, ...]], point_words: list[str],
                   fresh: tuple[str, ...]) -> list[str]:
    """2-3 of the point's aspects, each as the point's word or its synonym, plus one fresh aspect; shuffled."""
    reused = rng.sample(range(len(aspects)), rng.randint(*REUSED_BY_COUNTER))
    words = [point_words[i] if rng.random() < P_SAME_FORM
             else rng.choice([f for f in aspects[i] if f != point_words[i]]) for i in reused]
    words.append(rng.choice(fresh))
    rng.shuffle(words)
    return words


def _point_text(rng: random.Random, stance: str, words: list[str], topic: str, themes: list[str]) -> str:
    title = rng.choice(_TITLES[stance]).format(words[0], t=topic)
    return f"{title}\n\n{_sentences(rng, _PREMISES, _PREMISES, words[1:], topic, themes)}\n"


def _counter_text(rng: random.Random, words: list[str], topic: str, themes: list[str]) -> str:
    return _sentences(rng, _REBUTTAL_OPENERS, _REBUTTALS, words, topic, themes) + "\n"


def _sentences(rng: random.Random, openers: tuple[str, ...], templates: tuple[str, ...], words: list[str],
               topic: str, themes: list[str]) -> str:
    """At least 3 sentences (opener first) that between them use every word of ``words``; spare slots repeat one."""
    queue = list(words)
    out: list[str] = []
    opener = rng.choice(openers)
    others = [t for t in templates if t != opener]
    for template in [opener] + rng.sample(others, len(others)):
        if not queue and len(out) >= 3:
            break
        fill = [queue.pop(0) if queue else rng.choice(words) for _ in range(template.count("{}"))]
        out.append(template.format(*fill, t=topic, h=rng.choice(themes)))
    if queue:
        raise AssertionError(f"templates ran out with aspect words {queue} unplaced")  # a bug in the tables above
    return " ".join(out)
