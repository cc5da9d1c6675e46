"""A probe: the base model writing a question for an answer span of a training sentence,
few-shot (python answer_first.py N): the first sentences of N paragraphs. Output: answer_first.txt."""
import itertools, sys, time, re, random, torch
from transformers import AutoModelForCausalLM
from clara_cli.base_models import smollm2_base_dir, build_smollm2_tokenizer
from clara_cli.corpora import wiki_paragraphs, is_dev, split_sentences
torch.set_num_threads(2)
tok = build_smollm2_tokenizer()
lm = AutoModelForCausalLM.from_pretrained(smollm2_base_dir(), dtype=torch.bfloat16).eval()
SHOTS = [
 ("Written by the Roman poet Virgil between 29 and 19 BC, the Aeneid comprises 9,896 lines in dactylic hexameter.", "Virgil", "Who wrote the Aeneid?"),
 ("2001: A Space Odyssey is a 1968 epic science fiction film produced and directed by Stanley Kubrick.", "1968", "When was 2001: A Space Odyssey released?"),
 ("The Acropolis of Athens contains the remains of several ancient buildings, the most famous being the Parthenon.", "the Parthenon", "What is the most famous building on the Acropolis of Athens?"),
 ("Written by the Roman poet Virgil between 29 and 19 BC, the Aeneid comprises 9,896 lines in dactylic hexameter.", "9,896", "How many lines does the Aeneid have?"),
 ("The Academy Awards are presented annually by the Academy of Motion Picture Arts and Sciences (AMPAS) in the United States.", "the Academy of Motion Picture Arts and Sciences", "Who presents the Academy Awards?"),
]
CAND = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})\b|\b\d[\d,.]*\b|(?:[A-Z][\w'-]+(?:\s+(?:of|the|de|von|and)?\s*[A-Z][\w'-]+)*)")
def cands(title, sent):
    out=[]
    for m in CAND.finditer(sent):
        s=m.group(0).strip()
        if m.start()==0 and not s[0].isdigit(): continue
        if s.lower() in title.lower() or title.lower() in s.lower(): continue
        if len(s)<2: continue
        out.append(s)
    return out
rng = random.Random(0)
def prompt(sent, ans):
    shots = rng.sample(SHOTS, 3)
    s = "".join(f"Sentence: {p}\nAnswer: {a}\nQuestion: {q}\n\n" for p,a,q in shots)
    return s + f"Sentence: {sent}\nAnswer: {ans}\nQuestion:"
items=[]
for p in [p for p in itertools.islice(wiki_paragraphs('train'), 100, 400) if not is_dev(p['title'])][:int(sys.argv[1])]:
    sents = split_sentences(p['text'])
    # make the title explicit: replace a leading pronoun by the title
    for s in sents[:3]:
        c = cands(p['title'], s)
        if c:
            items.append((p['title'], s, rng.choice(c)))
tok.padding_side = "left"
t0=time.time(); B=16
for i in range(0, len(items), B):
    batch = items[i:i+B]
    enc = tok([prompt(s, a) for _, s, a in batch], return_tensors='pt', padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = lm.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    for (t, s, a), o in zip(batch, out):
        q = tok.decode(o[enc['input_ids'].shape[1]:], skip_special_tokens=True).split("\n")[0].strip()
        print(repr(t), '|', q, '->', a)
print(len(items), time.time()-t0, 's', file=sys.stderr)
