"""mkdocs hooks that keep the docs site whole in a classroom without internet.

The theme and mkdocs-jupyter would fetch MathJax and mermaid from CDNs in the browser. Instead the maths is
turned into MathML while the site is built (browsers draw MathML themselves), diagrams are committed as
SVG pictures, and after the build every page is checked: a page that would load anything from the
internet, or that still holds unconverted maths or a mermaid block, fails the (strict) build.
"""

import html
import re
from pathlib import Path

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

# Markdown cells of notebooks keep $$…$$ (Jupyter draws them); arithmatex wraps \[…\] and \(…\) in docs pages.
DISPLAY_MATH = re.compile(r"<p>\s*\$\$(.+?)\$\$\s*</p>", re.S)
ARITHMATEX = re.compile(r'<(div|span) class="arithmatex">\s*\\[\[(](.+?)\\[\])]\s*</\1>', re.S)
EXTERNAL = re.compile(r'<(?:script|img|iframe)\b[^>]*\bsrc="(?:https?:)?//|<link\b[^>]*\bhref="(?:https?:)?//[^"]*"[^>]*rel="stylesheet"'
                      r'|<link\b[^>]*rel="stylesheet"[^>]*\bhref="(?:https?:)?//')
SCRIPTS = re.compile(r"<script\b.*?</script>", re.S)  # code, not text (mkdocs-jupyter's idle MathJax settings hold "$$")
LEFTOVERS = {"maths the browser would need MathJax for": re.compile(r"\$\$|class=\"arithmatex\""),
             "a mermaid diagram (draw it as a committed SVG instead)": re.compile(r'class="[^"]*\bmermaid\b')}


def mathml(latex: str, block: bool) -> str:
    """LaTeX (as it appears in the page's HTML, so with entities) → a MathML element."""
    return convert(html.unescape(latex).strip(), display="block" if block else "inline")


def on_page_content(page_html, page, config, files):
    page_html = DISPLAY_MATH.sub(lambda m: mathml(m.group(1), block=True), page_html)
    return ARITHMATEX.sub(lambda m: mathml(m.group(2), block=m.group(1) == "div"), page_html)


def on_post_build(config):
    problems = []
    for page in sorted(Path(config["site_dir"]).rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(config["site_dir"])
        if match := EXTERNAL.search(text):
            problems.append(f"{name} loads {match.group(0)!r}… from the internet")
        text = SCRIPTS.sub("", text)
        problems += [f"{name} holds {what}" for what, pattern in LEFTOVERS.items() if pattern.search(text)]
    if problems:
        raise PluginError("the site must work offline: " + "; ".join(problems))
