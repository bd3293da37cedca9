"""Built-in datasets: the Amazon 5-core categories, user folders in the documented format, synthetic.

Data root: the ``--data-root`` option, else the environment variable ``FUSIONBENCH_DATA``, else
``shared/data`` or ``../shared/data`` under the working directory. ``beauty`` needs no root: a compact
copy ships inside the package (``fusionbench/data/bundled/beauty``).

Table 1 of the MMSR paper prints the Kitchen and Phone columns swapped; loaders here go by category
name and assert the standard 5-core counts (``kitchen`` = Home and Kitchen 66,519 / 28,237 / 551,682).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import torch

from fusionbench.data.core import ImageSource, ItemSide, SequenceData
from fusionbench.data.io import find_file, read_attribute_json, read_feature_matrix, read_item_table, read_sequences
from fusionbench.errors import DataError
from fusionbench.options import Ge, Le, PluginOptions, require
from fusionbench.registry import DATASETS

BUNDLED = Path(__file__).parent / "bundled"
DATA_ENV = "FUSIONBENCH_DATA"


@dataclass(frozen=True)
class DatasetContext:
    """What dataset plugins are built from: the data root (may be ``None`` = resolve by default rules)."""

    root: Optional[Path] = None


def resolve_root(root: Optional[Path]) -> Path:
    """The data root: explicit, else ``$FUSIONBENCH_DATA``, else ``[../]shared/data`` under the cwd."""
    if root is not None:
        candidates = [Path(root)]
    elif os.environ.get(DATA_ENV):
        candidates = [Path(os.environ[DATA_ENV])]
    else:
        candidates = [Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"data root not found (looked in {looked}); pass --data-root DIR or set {DATA_ENV}")


def kcore(flat: torch.Tensor, offsets: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Iterated k-core filter: drop items with < k interactions and users with < k, until stable.

    Returns ``(flat, offsets, kept_items)`` where ``flat`` is re-indexed to 1..n in sorted order of the
    original ids and ``kept_items [n]`` holds those original ids.
    """
    user = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets[1:] - offsets[:-1])
    keep = torch.ones_like(flat, dtype=torch.bool)
    while True:
        item_count = torch.bincount(flat[keep], minlength=int(flat.max()) + 1)
        user_count = torch.bincount(user[keep], minlength=offsets.numel() - 1)
        new_keep = keep & (item_count[flat] >= k) & (user_count[user] >= k)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    kept_items = torch.unique(flat[keep])
    remap = torch.zeros(int(flat.max()) + 1, dtype=torch.long)
    remap[kept_items] = torch.arange(1, kept_items.numel() + 1)
    user_count = torch.bincount(user[keep], minlength=offsets.numel() - 1)
    user_count = user_count[user_count > 0]
    new_offsets = torch.zeros(user_count.numel() + 1, dtype=torch.long)
    new_offsets[1:] = torch.cumsum(user_count, 0)
    return remap[flat[keep]], new_offsets, kept_items


def _check_counts(data: SequenceData, expected: tuple[int, int, int], where: str) -> None:
    got = (data.n_users, data.n_items, data.n_interactions)
    if got != expected:
        raise DataError(
            f"{where}: expected {expected[0]} users / {expected[1]} items / {expected[2]} interactions "
            f"(MMSR Table 1, 5-core), got {got[0]} / {got[1]} / {got[2]}"
        )


@dataclass(frozen=True)
class TextSource:
    """A text source of the ``text`` channel (``features.text = name``): column ``column`` of the item
    table ``file`` (tab-separated, with ``item_id``; an empty cell = no text for that item). Tables with
    an ``asin`` column are joined on item id and must agree on every item's ASIN. ``more``: further columns
    of the same table appended after ``column``, separated by one space (empty cells left out)."""

    name: str
    file: str
    column: str
    more: tuple[str, ...] = ()


PREFIX = TextSource("prefix", "items.tsv", "title_prefix")
"""The short title prefix of the Amazon folders (IDGenRec's textual ids, see their PROVENANCE.md)."""


def _read_texts(folder: Path, sources: tuple[TextSource, ...], n_items: int,
                tables: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """name -> text per item id of every source whose file exists in ``folder`` (a missing file: the
    source is absent; a missing column, or an ASIN that disagrees with ``items.tsv``: DataError).
    ``tables``: item tables already read, by file name (``items.tsv``); tables read here are added."""
    asins = tables.get("items.tsv", {}).get("asin")
    texts: dict[str, list[str]] = {}
    for source in sources:
        path = find_file(folder, source.file, required=False)
        if path is None:
            continue
        if source.file not in tables:
            tables[source.file] = read_item_table(path, n_items)
            other = tables[source.file].get("asin")
            if asins is not None and other is not None:
                wrong = [i for i in range(1, n_items + 1) if asins[i] and other[i] and asins[i] != other[i]]
                if wrong:
                    raise DataError(f"{path}: item {wrong[0]} has asin {other[wrong[0]]!r}, items.tsv says "
                                    f"{asins[wrong[0]]!r} ({len(wrong)} items disagree); the tables must share "
                                    "item ids")
        table = tables[source.file]
        for column in (source.column, *source.more):
            if column not in table:
                raise DataError(f"{path}:1: no column {column!r} (text source {source.name!r})")
        if not source.more:
            texts[source.name] = table[source.column]
            continue
        columns = [table[c] for c in (source.column, *source.more)]
        texts[source.name] = [" ".join(cell.strip() for cell in cells if cell.strip()) for cells in zip(*columns)]
    return texts


@dataclass(frozen=True)
class ImageSpec:
    """An image source of an Amazon folder (``features.image = name``): ``kind`` ``"encoder"``, a folder
    ``path`` of photos named ``<asin>.<suffix>`` (the ``asin`` column of ``items.tsv``), or ``"file"``, a
    feature matrix ``.npy`` at ``path`` (relative to the dataset folder). A path the folder lacks: the
    source is absent when the data loads."""

    name: str
    kind: Literal["encoder", "file"]
    path: str


def _image_sources(folder: Path, specs: tuple[ImageSpec, ...], asins: Optional[list[str]]) -> dict[str, ImageSource]:
    sources: dict[str, ImageSource] = {}
    for spec in specs:
        path = folder / spec.path
        if spec.kind == "encoder":
            if not path.is_dir():
                continue
            if asins is None:
                raise DataError(f"{folder / 'items.tsv'}: an 'asin' column is needed to match the photos in {path} "
                                f"to items (image source {spec.name!r})")
            sources[spec.name] = ImageSource("encoder", path, tuple(asins), "asin")
        elif path.is_file():
            sources[spec.name] = ImageSource("file", path)
    return sources


def _load_amazon(folder: Path, name: str, sequence_file: str, attribute_file: Optional[str],
                 expected: tuple[int, int, int], text_sources: tuple[TextSource, ...] = (),
                 image_specs: tuple[ImageSpec, ...] = ()) -> SequenceData:
    flat, offsets = read_sequences(find_file(folder, sequence_file))
    n_items = int(flat.max())
    attributes = None
    n_attributes = 0
    table_path = find_file(folder, "items.tsv", required=False)
    tables = {} if table_path is None else {"items.tsv": read_item_table(table_path, n_items)}
    asins = tables["items.tsv"].get("asin") if tables else None
    texts = _read_texts(folder, text_sources, n_items, tables)
    if attribute_file is not None:
        attributes = read_attribute_json(find_file(folder, attribute_file), n_items)
        n_attributes = max((max(a) for a in attributes if a), default=0)
    original = text_sources[0].name if text_sources else PREFIX.name  # the one the data checksum covers
    side = ItemSide(titles=texts.get(original), attributes=attributes, n_attributes=n_attributes, asins=asins,
                    title_source=original, extra_texts={k: v for k, v in texts.items() if k != original},
                    image_sources=_image_sources(folder, image_specs, asins))
    data = SequenceData(name, n_items, flat, offsets, side, source=str(folder))
    _check_counts(data, expected, str(folder / sequence_file))
    return data


@dataclass(frozen=True)
class _AmazonSpec:
    folder: str
    sequence_file: str
    attribute_file: Optional[str]
    counts: tuple[int, int, int]  # users, items, interactions (MMSR Table 1 / standard 5-core)
    texts: tuple[TextSource, ...] = ()  # the original source (covered by the data checksum) first
    images: tuple[ImageSpec, ...] = ()  # the default (DEFAULT_IMAGE_SOURCE) first


AMAZON = {
    "beauty": _AmazonSpec("amazon_beauty", "Beauty.txt", "Beauty_item2attributes.json", (22363, 12101, 198502),
                          (PREFIX, TextSource("title", "item_text.tsv", "title"))),
    "sports": _AmazonSpec("amazon_sports", "Sports_and_Outdoors.txt", "Sports_and_Outdoors_item2attributes.json",
                          (35598, 18357, 296337), (PREFIX,)),
    "toys": _AmazonSpec("amazon_toys", "Toys_and_Games.txt", "Toys_and_Games_item2attributes.json",
                        (19412, 11924, 167597),
                        (PREFIX, TextSource("title", "item_text.tsv", "title"),
                         TextSource("title_description", "item_text.tsv", "title", ("description",))),
                        (ImageSpec("efficientnet", "encoder", "images"),
                         ImageSpec("clip", "file", "features/clip_vit_b32_image.npy"))),
    "clothing": _AmazonSpec("amazon_clothing", "Clothing.txt", None, (39387, 23033, 278677)),
    "kitchen": _AmazonSpec("amazon_kitchen", "Home_and_Kitchen.txt", None, (66519, 28237, 551682)),
    "phone": _AmazonSpec("amazon_phone", "Cell_Phones_and_Accessories.txt", None, (27879, 10429, 194439)),
}


SUBSET_SEED = 0
"""Seed of the users ``data.users`` draws (``SequenceData.user_subset``): the same N users every time."""

USERS_HELP = ("a quick look, not the benchmark: N users drawn at random (fixed seed) with their whole sequences, "
              "items and side data unchanged (0 = all users)")


@dataclass(frozen=True)
class AmazonOptions(PluginOptions):
    """``root``: data root holding ``amazon_<category>/`` ("" = default resolution); ``users``: see
    :data:`USERS_HELP`, bounded by the dataset's user count in each dataset's own options
    (:func:`amazon_options`); it enters a config only when set, so runs on all users keep their hashes."""

    HELP = {"root": "data root holding amazon_<category>/ (\"\" = default resolution)", "users": USERS_HELP}
    ONLY_WHEN_SET = frozenset({"users"})

    root: str = ""
    users: Annotated[int, Ge(0)] = 0


@dataclass(frozen=True)
class BeautySource(PluginOptions):
    """``source``: "bundled" (the copy inside the package) or "root" (``<data root>/amazon_beauty``); ``root``
    and ``users`` as for the other Amazon datasets (:class:`AmazonOptions`)."""

    HELP = {"source": "bundled (the copy inside the package) or root (<data root>/amazon_beauty)",
            **AmazonOptions.HELP}
    ONLY_WHEN_SET = AmazonOptions.ONLY_WHEN_SET

    source: Literal["bundled", "root"] = "bundled"
    root: str = ""
    users: Annotated[int, Ge(0)] = 0


def amazon_options(key: str, base: type[PluginOptions] = AmazonOptions) -> type[PluginOptions]:
    """The options of Amazon dataset ``key``: ``base`` with ``users`` in [0, its user count], so a larger
    ``data.users`` is an error naming the option and the bound when the run is resolved."""
    bounded = Annotated[int, Ge(0), Le(AMAZON[key].counts[0])]
    return dataclasses.make_dataclass(f"{key.capitalize()}Options", [("users", bounded, dataclasses.field(default=0))],
                                      bases=(base,), frozen=True, namespace={"__module__": __name__})


BeautyOptions = amazon_options("beauty", BeautySource)


class AmazonDataset:
    """Amazon 2014 5-core category in S3Rec/P5 format (see each folder's PROVENANCE.md).

    Channels: ``text`` (from the text sources of :data:`AMAZON`, see :meth:`text_sources`) and ``attr``
    (brand/category attribute ids) where the folder has them; ``image`` where :data:`AMAZON` names image
    sources (``toys``: its product photos through EfficientNet-Lite0, or the shipped CLIP vectors; see
    :meth:`image_sources`), absent elsewhere.

    ``users`` = N > 0 keeps N users drawn at random with :data:`SUBSET_SEED` (``SequenceData.user_subset``):
    their sequences whole, every item (also those left without interactions, which are still ranked) and
    the side data, so the feature tables and their cache are the full data's. A quick look, not the
    benchmark: fewer users, so fewer training samples and noisier test metrics.
    """

    key = ""
    Options = AmazonOptions

    def __init__(self, ctx: DatasetContext, opts: PluginOptions):
        self.ctx, self.opts = ctx, opts

    def folder(self) -> Path:
        root = Path(self.opts.root) if getattr(self.opts, "root", "") else self.ctx.root
        return resolve_root(root) / AMAZON[self.key].folder

    def text_sources(self) -> tuple[str, ...]:
        """Names of the text sources ``features.text`` may pick (known without loading; the original
        source first). A source whose file the folder lacks is absent when the data loads."""
        return tuple(source.name for source in AMAZON[self.key].texts)

    def image_sources(self) -> tuple[str, ...]:
        """Names of the image sources ``features.image`` may pick (known without loading; the default first).
        A source whose folder or file the dataset folder lacks is absent when the data loads."""
        return tuple(source.name for source in AMAZON[self.key].images)

    def load(self) -> SequenceData:
        spec = AMAZON[self.key]
        folder = self.folder()
        if not folder.is_dir():
            raise DataError(f"dataset {self.key!r}: folder {folder} not found")
        data = _load_amazon(folder, self.key, spec.sequence_file, spec.attribute_file, spec.counts, spec.texts,
                            spec.images)
        return data.user_subset(self.opts.users, SUBSET_SEED) if self.opts.users else data

    def item_column(self, column: str) -> tuple[list[str], int, str]:
        """``(values, n, where)``: column ``column`` of the folder's item tables (``items.tsv``, then the
        tables of the text sources) per item id 1..n (index 0 unused), n and the table it came from.
        DataError naming the tables and their columns if none has it."""
        folder = self.folder()
        if not folder.is_dir():
            raise DataError(f"dataset {self.key!r}: folder {folder} not found")
        flat, _ = read_sequences(find_file(folder, AMAZON[self.key].sequence_file))
        return _column_of(folder, list(dict.fromkeys(["items.tsv", *(t.file for t in AMAZON[self.key].texts)])),
                          column, int(flat.max()))


@DATASETS.register("beauty")
class Beauty(AmazonDataset):
    """Amazon Beauty 5-core (22,363 users, 12,101 items, 198,502 interactions); ships with the package."""

    key = "beauty"
    Options = BeautyOptions

    def folder(self) -> Path:
        if self.opts.source == "bundled":
            return BUNDLED / "beauty"
        return super().folder()


def _register_amazon(key: str, doc: str) -> None:
    cls = type(key.capitalize(), (AmazonDataset,), {"key": key, "__doc__": doc, "__module__": __name__,
                                                    "Options": amazon_options(key)})
    DATASETS.register(key)(cls)


_register_amazon("sports", "Amazon Sports and Outdoors 5-core (35,598 / 18,357 / 296,337); text (title prefix) + attr.")
_register_amazon("toys", "Amazon Toys and Games 5-core (19,412 / 11,924 / 167,597); image (photos or CLIP), "
                         "text (title, title + description, or title prefix) + attr.")
_register_amazon("clothing", "Amazon Clothing, Shoes and Jewelry 5-core (39,387 / 23,033 / 278,677); IDs only.")
_register_amazon("kitchen", "Amazon Home and Kitchen 5-core (66,519 / 28,237 / 551,682); IDs only.")
_register_amazon("phone", "Amazon Cell Phones and Accessories 5-core (27,879 / 10,429 / 194,439); IDs only.")


@dataclass(frozen=True)
class FolderOptions(PluginOptions):
    """``path``: the dataset folder; ``min_count``: k of the iterated k-core filter (1 = none)."""

    path: str = ""
    min_count: Annotated[int, Ge(1)] = 5

    def check(self) -> None:
        require(bool(self.path), "option 'path' is required: the dataset folder (--set path=DIR)")


@DATASETS.register("folder")
class FolderDataset:
    """Any dataset in the documented folder format (docs/datasets.md).

    ``sequences.txt`` (required): ``user_id item_id ...`` per line, oldest first, item ids >= 1.
    ``items.tsv`` (optional): header with ``item_id`` and optional ``title`` (-> ``text``),
    ``attributes`` (``|``-separated names -> ``attr``), ``asin``.
    ``features/<name>.npy`` (optional): float ``[n_items + 1, d]`` aligned to item ids, all-NaN row =
    absent; each file becomes the channel ``<name>``.
    The iterated k-core filter (``min_count``) runs first; items are re-indexed 1..n by sorted id.
    """

    Options = FolderOptions

    def __init__(self, ctx: DatasetContext, opts: FolderOptions):
        self.ctx, self.opts = ctx, opts

    def text_sources(self) -> tuple[str, ...]:
        """The one text source a folder can have: ``title`` (the ``title`` column of ``items.tsv``)."""
        return ("title",)

    def item_column(self, column: str) -> tuple[list[str], int, str]:
        """``(values, n, where)``: column ``column`` of ``items.tsv`` per original item id 1..n (n = the
        largest id in ``sequences.txt``, the rows of ``features/<name>.npy``), and the file."""
        folder = Path(self.opts.path)
        if not folder.is_dir():
            raise DataError(f"dataset folder {folder} not found")
        flat, _ = read_sequences(find_file(folder, "sequences.txt"))
        return _column_of(folder, ["items.tsv"], column, int(flat.max()))

    def load(self) -> SequenceData:
        folder = Path(self.opts.path)
        if not folder.is_dir():
            raise DataError(f"dataset folder {folder} not found")
        flat, offsets = read_sequences(find_file(folder, "sequences.txt"))
        n_original = int(flat.max())
        flat, offsets, kept = kcore(flat, offsets, self.opts.min_count)
        if flat.numel() == 0:
            raise DataError(f"{folder}: nothing left after the {self.opts.min_count}-core filter")
        n_items = kept.numel()
        rows = np.concatenate([[0], kept.numpy()])  # new id -> original id
        titles = attributes = asins = None
        n_attributes = 0
        table_path = find_file(folder, "items.tsv", required=False)
        if table_path is not None:
            table = {k: [v[i] for i in rows] for k, v in read_item_table(table_path, n_original).items()}
            titles, asins = table.get("title"), table.get("asin")
            if "attributes" in table:
                vocab = sorted({a for cell in table["attributes"] for a in cell.split("|") if a})
                index = {a: i + 1 for i, a in enumerate(vocab)}
                attributes = [tuple(index[a] for a in cell.split("|") if a) for cell in table["attributes"]]
                n_attributes = len(vocab)
        dense = {}
        feature_dir = folder / "features"
        if feature_dir.is_dir():
            for path in sorted(feature_dir.glob("*.npy")):
                if not path.stem.isidentifier():
                    raise DataError(f"{path}: a channel name must be letters, digits and '_' (got {path.stem!r})")
                channel = read_feature_matrix(path, n_original)
                dense[path.stem] = type(channel)(channel.features[rows], channel.present[rows])
        for derived, present in (("text", titles is not None), ("attr", attributes is not None)):
            if present and derived in dense:
                raise DataError(f"{feature_dir / derived}.npy: channel {derived!r} is also derived from items.tsv; "
                                "rename the file or drop the column")
        side = ItemSide(titles=titles, attributes=attributes, n_attributes=n_attributes, dense=dense, asins=asins)
        name = f"folder:{folder.name}"
        return SequenceData(name, n_items, flat, offsets, side, source=str(folder))


def _column_of(folder: Path, files: list[str], column: str, n_items: int) -> tuple[list[str], int, str]:
    seen: list[str] = []
    for name in files:
        path = find_file(folder, name, required=False)
        if path is None:
            continue
        table = read_item_table(path, n_items)
        if column in table:
            return table[column], n_items, str(path)
        seen.append(f"{path.name} has {', '.join(['item_id', *table])}")
    raise DataError(f"--id-column {column!r}: no item table of {folder} has a column {column!r} "
                    f"({'; '.join(seen) or 'no items.tsv'})")


def load_dataset(name: str, root: Optional[Path] = None, **options) -> SequenceData:
    """Load dataset ``name`` with its options (the one entry point the harness uses)."""
    return DATASETS.create(name, DatasetContext(root), **options).load()


def declared_image_sources(name: str, options: dict) -> Optional[tuple[str, ...]]:
    """The image sources dataset ``name`` declares (its plugin's ``image_sources()``, the default first), or
    ``None`` for a plugin that declares none: then ``features.image`` is checked when the channel is built."""
    plugin = DATASETS.create(name, DatasetContext(), **options)
    declare = getattr(plugin, "image_sources", None)
    return None if declare is None else tuple(declare())


def item_keys(name: str, column: str, root: Optional[Path] = None, **options) -> tuple[list[str], int, str]:
    """``(keys, n, where)``: column ``column`` of dataset ``name``'s item table per item id (index 0 unused),
    in the ids a ``features/<name>.npy`` of that dataset is aligned to (a folder dataset: its original ids,
    n = the largest in ``sequences.txt``), and the table read. DataError for a dataset without item tables."""
    plugin = DATASETS.create(name, DatasetContext(root), **options)
    read = getattr(plugin, "item_column", None)
    if read is None:
        raise DataError(f"dataset {name!r} has no item table to map image file names through (--id-column)")
    return read(column)


def declared_text_sources(name: str, options: dict) -> Optional[tuple[str, ...]]:
    """The text sources dataset ``name`` declares (its plugin's ``text_sources()``, known without
    loading; the original source first), or ``None`` for a plugin that declares none (a third-party
    dataset): then a run's ``features.text`` is checked only when its text channel is built."""
    plugin = DATASETS.create(name, DatasetContext(), **options)
    declare = getattr(plugin, "text_sources", None)
    return None if declare is None else tuple(declare())


from fusionbench.data import synthetic  # noqa: E402,F401  (registers "synthetic")
