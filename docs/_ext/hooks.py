"""mkdocs hooks for the reference site (mkdocs.yml ``hooks:``).

* The README is the site's home page: it is added as ``index.md``, its links
  into ``docs/`` rewritten to the pages beside it.
* Images outside ``docs/`` (figures beside their records in ``results/``) are
  copied into the site under ``_repo/`` and the image links pointed there.
* Links from a page to a file of the clone outside ``docs/`` (a config, a
  result record, a script) are checked here: a missing target fails the build,
  as a missing page does. They become links to ``extra.source_url`` + path when
  mkdocs.yml sets it (e.g. a repository's file browser), else the link text
  alone, since the site does not carry those files.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# [text](target) outside code spans; images too (the leading ! is kept out of the match).
LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[([^\]\n]*)\]\(([^)\s]+)\)")
COPIES = "_repo"  # where images from outside docs/ go in the site


def _outside_images(markdown: str, page_dir: Path) -> dict[str, Path]:
    """``{target: path relative to the clone}`` of the page's images that lie outside ``docs/``."""
    found = {}
    for _, target in IMAGE.findall(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        resolved = (page_dir / target).resolve()
        if DOCS not in resolved.parents and ROOT in resolved.parents:
            found[target] = resolved.relative_to(ROOT)
    return found


def on_files(files: Files, config, **kwargs) -> Files:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=readme))
    copied = set()
    for page in sorted(DOCS.rglob("*.md")):
        if "_ext" in page.parts:
            continue
        for rel in _outside_images(page.read_text(encoding="utf-8"), page.parent).values():
            if rel not in copied and (ROOT / rel).is_file():  # a missing one is reported by on_page_markdown
                copied.add(rel)
                files.append(File.generated(config, f"{COPIES}/{rel.as_posix()}", abs_src_path=str(ROOT / rel)))
    return files


def _images_to_copies(markdown: str, page_dir: Path, src: str, where: str) -> str:
    images = _outside_images(markdown, page_dir)

    def one(match: re.Match) -> str:
        alt, target = match.groups()
        if target not in images:
            return match.group(0)
        rel = images[target]
        if not (ROOT / rel).is_file():
            raise PluginError(f"{where}: image {target!r}: {rel} does not exist")
        return f"![{alt}]({posixpath.relpath(f'{COPIES}/{rel.as_posix()}', posixpath.dirname(src) or '.')})"

    return IMAGE.sub(one, markdown)


def _outside_link(text: str, target: str, page_dir: Path, source_url: str | None, where: str) -> str:
    path, _, anchor = target.partition("#")
    resolved = (page_dir / path).resolve()
    try:
        rel = resolved.relative_to(ROOT)
    except ValueError:
        raise PluginError(f"{where}: link {target!r} points outside the clone") from None
    if not resolved.exists():
        raise PluginError(f"{where}: link {target!r}: {rel} does not exist")
    if source_url:
        return f"[{text}]({source_url.rstrip('/')}/{rel.as_posix()}{'#' + anchor if anchor else ''})"
    return text


def _rewrite(markdown: str, page_dir: Path, in_docs, source_url, where) -> str:
    def one(match: re.Match) -> str:
        text, target = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)  # a URL, or an anchor on the same page
        path = target.partition("#")[0]
        resolved = (page_dir / path).resolve()
        if resolved == DOCS or DOCS in resolved.parents:
            return in_docs(text, target)
        return _outside_link(text, target, page_dir, source_url, where)

    # Code blocks keep their text: split on fences and rewrite only the prose between them.
    parts = re.split(r"(^```.*?^```[ \t]*$)", markdown, flags=re.M | re.S)
    return "".join(p if i % 2 else LINK.sub(one, p) for i, p in enumerate(parts))


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    source_url = (config.extra or {}).get("source_url")
    src = page.file.src_uri
    if src == "index.md" and page.file.generated_by is not None:  # the README, relative to the clone's root
        def in_docs(text, target):
            return f"[{text}]({posixpath.relpath(target, 'docs')})"

        return _rewrite(markdown, ROOT, in_docs, source_url, "README.md")
    page_dir = (DOCS / src).parent
    markdown = _images_to_copies(markdown, page_dir, src, f"docs/{src}")
    return _rewrite(markdown, page_dir, lambda text, target: f"[{text}]({target})", source_url, f"docs/{src}")


def on_post_page(output: str, page, config, **kwargs) -> str:
    """A notebook page (mkdocs-jupyter renders it to HTML itself): its links to ``X.md`` go to page ``X``."""
    if not page.file.src_uri.endswith(".ipynb"):
        return output

    def one(match: re.Match) -> str:
        name, anchor = match.group(1), match.group(2) or ""
        if not (DOCS / f"{name}.md").is_file():
            raise PluginError(f"docs/{page.file.src_uri}: link {name}.md{anchor}: no such page")
        target = f"../{name}/" if config.use_directory_urls else f"{name}.html"
        return f'href="{target}{anchor}"'

    return re.sub(r'href="([\w-]+)\.md(#[^"]*)?"', one, output)
