"""Certified local edit of one block: python edit.py block=K edit.prompt="..." edit.target="...".

Writes a ROME/MEMIT update of block K's MLP as a certified surrogate into
runs/<model>/edits/<time>/ (see docs/editing.md and conf/edit.yaml); `python certify.py
runs=<that dir>` composes it with every other block as the teacher (or set edit.certify=true).
The entry point itself is blockcert.entry (also `blockcert-edit`).
"""

from blockcert.entry import edit_cli

if __name__ == "__main__":
    edit_cli()
