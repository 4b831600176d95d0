"""Every relative link of the repository's Markdown files resolves to a file
or folder of the repository (external links are not followed: CI has no
network). Prints each broken link; exits 1 when there is one."""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
broken = []
files = [p for p in root.rglob("*.md") if not any(part in ("target", ".git") for part in p.parts)]
for md in files:
    text = md.read_text()
    # Links outside code blocks: [text](target) and ![alt](target).
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (md.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(f"{md.relative_to(root)}: {target}")
for b in broken:
    print("broken link:", b)
print(f"{len(files)} Markdown files, {len(broken)} broken links")
sys.exit(1 if broken else 0)
