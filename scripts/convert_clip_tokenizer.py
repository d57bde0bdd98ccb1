"""Convert OpenAI CLIP's BPE vocabulary into the files a transformers `CLIPTokenizer` reads.

The CLIP vocabulary ships inside the `open_clip_torch` wheel as `bpe_simple_vocab_16e6.txt.gz`:
a list of 48,894 byte-pair merges. CLIP's vocabulary is built from it deterministically:

    256 byte symbols  +  the same 256 with the end-of-word marker "</w>"
    + one token per merge (in merge order)  +  <|startoftext|>, <|endoftext|>   = 49,408 tokens

This script rebuilds that list, writes `vocab.json` / `merges.txt` beside a tokenizer config, and
checks that the result encodes prompts exactly as open_clip's own tokenizer does. It is run once by
a developer (it needs `pip download open_clip_torch`); its output is committed under
`illustrated_sd/assets/tiny-sd/tokenizer/` (the embedded model's own tokenizer folder), so open_clip is not a dependency of the package.

    pip download --no-deps -d /tmp/oc open_clip_torch
    python scripts/convert_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl
"""

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "illustrated_sd" / "assets" / "tiny-sd" / "tokenizer"  # paths.CLIP_TOKENIZER
N_MERGES = 49152 - 256 - 2  # the slice open_clip and OpenAI's CLIP both take from the file

CHECK_PROMPTS = [
    "a red circle on the left",
    "a photo of a cat",
    "A yellow triangle on the left and a purple heart on the right!",
    "don't  stop   believin' 123 ünïcödé, emoji 🙂 and CamelCase",
]


def bytes_to_unicode():
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_vocab(bpe_gz: bytes):
    merges = gzip.decompress(bpe_gz).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", help="path to an open_clip_torch wheel")
    args = parser.parse_args()

    with zipfile.ZipFile(args.wheel) as whl:
        bpe_gz = whl.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
        tokenizer_src = whl.read("open_clip/tokenizer.py").decode()

    vocab, merges = build_vocab(bpe_gz)
    assert len(vocab) == 49408, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")

    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(OUT / "vocab.json"), str(OUT / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(OUT)

    # open_clip's reference tokenizer, loaded from the wheel's source without installing the package
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bpe_simple_vocab_16e6.txt.gz").write_bytes(bpe_gz)
        (Path(tmp) / "oc_tokenizer.py").write_text(tokenizer_src)
        spec = importlib.util.spec_from_file_location("oc_tokenizer", Path(tmp) / "oc_tokenizer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        reference = module.SimpleTokenizer(str(Path(tmp) / "bpe_simple_vocab_16e6.txt.gz"))

    tok = CLIPTokenizer.from_pretrained(OUT)
    for prompt in CHECK_PROMPTS:
        ours = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = reference(prompt, context_length=77)[0].tolist()
        # open_clip pads with 0; Stable Diffusion 1.x pads with <|endoftext|>: compare up to the end marker
        n = theirs.index(49407) + 1
        status = "ok" if ours[:n] == theirs[:n] else "MISMATCH"
        print(f"{status:8s} {prompt!r}: {ours[:n]}")
        if status != "ok":
            sys.exit(1)
    print(f"wrote {sorted(p.name for p in OUT.iterdir())} to {OUT}")


if __name__ == "__main__":
    main()
