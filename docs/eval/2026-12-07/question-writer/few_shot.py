"""A probe: SmolLM2-135M-Instruct (the base model) writing questions about training paragraphs,
few-shot (python few_shot.py N): N paragraphs. Output: few_shot.txt."""
import itertools, sys, time, torch
from transformers import AutoModelForCausalLM
from clara_cli.base_models import smollm2_base_dir, build_smollm2_tokenizer
from clara_cli.corpora import wiki_paragraphs, is_dev
torch.set_num_threads(2)
path = smollm2_base_dir()
tok = build_smollm2_tokenizer()
lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
SHOTS = [
 ("The Aeneid is a Latin epic poem that tells the legendary story of Aeneas, a Trojan who fled the fall of Troy and travelled to Italy, where he became the ancestor of the Romans. Written by the Roman poet Virgil between 29 and 19 BC, the Aeneid comprises 9,896 lines in dactylic hexameter.",
  "Who wrote the Aeneid?", "Virgil"),
 ("2001: A Space Odyssey is a 1968 epic science fiction film produced and directed by Stanley Kubrick, who co-wrote the screenplay with Arthur C. Clarke.",
  "In what year was 2001: A Space Odyssey released?", "1968"),
 ("The Acropolis of Athens is an ancient citadel located on a rocky outcrop above the city of Athens, Greece, and contains the remains of several ancient buildings of great architectural and historical significance, the most famous being the Parthenon.",
  "What is the most famous building on the Acropolis of Athens?", "the Parthenon"),
]
def prompt(text):
    s = "".join(f"Paragraph: {p}\nQuestion: {q}\nAnswer: {a}\n\n" for p,q,a in SHOTS)
    return s + f"Paragraph: {text}\nQuestion:"
ps = [p for p in itertools.islice(wiki_paragraphs('train'), 100, 400) if not is_dev(p['title'])][:int(sys.argv[1])]
tok.padding_side = "left"
t0=time.time()
B=8
for i in range(0, len(ps), B):
    batch = ps[i:i+B]
    enc = tok([prompt(p['text']) for p in batch], return_tensors='pt', padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = lm.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    for p, o in zip(batch, out):
        s = tok.decode(o[enc['input_ids'].shape[1]:], skip_special_tokens=True)
        s = s.split("\n\n")[0]
        print(repr(p['title']), '|', s.replace("\n", " || "))
print(time.time()-t0, 's', file=sys.stderr)
