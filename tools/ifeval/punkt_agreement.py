"""How far the offline sentence splitter can move IFEval's two sentence-based checks.

    python -m tools.ifeval.punkt_agreement                       # the repository's docs as the text sample
    python -m tools.ifeval.punkt_agreement --texts answers.jsonl # or model answers ({"response": ...} per line)

IFEval splits sentences with NLTK's Punkt English model, which is fetched from the network and is not on
this machine; lit_align then runs NLTK's Punkt algorithm with the parameters the ``nupunkt`` package
ships (``lit_align.tasks.constraints.punkt``). Without NLTK's model its output cannot be compared to
the reference directly, so this measures how much the choice of parameters matters at all: on each
text (a paragraph, or an answer), the sentence count of the splitter in use against two others,

- ``nupunkt``: nupunkt's own splitter (its algorithm and its parameters);
- ``untrained``: NLTK's Punkt algorithm with no parameters (no abbreviations known).

and the share of texts whose ``length_constraints:number_sentences`` verdict would change, over the
thresholds the generator draws (2-8, both relations). Where NLTK's own model is installed it is used
instead, and the line "splitter in use" says so.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def paragraphs(folder: Path) -> list[str]:
    """Prose paragraphs of the markdown files under ``folder``: no tables, code or headings."""
    texts = []
    for path in sorted(folder.glob("*.md")):
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for block in text.split("\n\n"):
            lines = [l.strip() for l in block.splitlines() if l.strip() and not l.lstrip().startswith(("|", "#", "-", "*", "!", ">"))]
            block = " ".join(lines)
            if len(block.split()) >= 12:
                texts.append(block)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", default=None, help="a JSONL file of {'response': text}; default: docs/*.md paragraphs")
    args = parser.parse_args()
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    import nltk
    import nupunkt

    from lit_align.tasks.constraints.punkt import ensure_punkt

    source = ensure_punkt()
    if args.texts:
        texts = [json.loads(l)["response"] for l in Path(args.texts).read_text(encoding="utf-8").splitlines() if l.strip()]
        what = args.texts
    else:
        texts, what = paragraphs(ROOT / "docs"), "docs/*.md prose paragraphs"
    untrained = PunktSentenceTokenizer()
    counts = {"in use": [len(nltk.sent_tokenize(t)) for t in texts],
              "nupunkt": [len(nupunkt.sent_tokenize(t)) for t in texts],
              "untrained": [len(untrained.tokenize(t)) for t in texts]}
    print(f"texts: {len(texts)} ({what}); sentences (splitter in use): {sum(counts['in use'])}")
    print(f"splitter in use: {'NLTK punkt_tab english' if source == 'nltk' else 'NLTK Punkt with nupunkt parameters'}")
    for other in ("nupunkt", "untrained"):
        same = sum(a == b for a, b in zip(counts["in use"], counts[other]))
        flips = total = 0
        for a, b in zip(counts["in use"], counts[other]):
            for n in range(2, 9):
                total += 2
                flips += (a < n) != (b < n)  # "less than n"
                flips += (a >= n) != (b >= n)  # "at least n"
        print(f"  against {other}: same sentence count on {same}/{len(texts)} texts ({same / len(texts):.1%}); "
              f"number_sentences verdicts that change: {flips}/{total} ({flips / total:.1%})")


if __name__ == "__main__":
    main()
