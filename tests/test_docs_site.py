"""The docs site works offline: maths becomes MathML while it is built, and a page that would fetch
anything from the internet fails the build."""

import importlib.util
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("offline", ROOT / "docs_hooks" / "offline.py")
offline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(offline)


def test_notebook_and_page_maths_become_mathml():
    notebook = "<p>weighted by</p>\n<p>$$P = \\mathrm{softmax}\\!\\left(\\frac{QK^\\top}{\\sqrt d}\\right) &amp; x$$</p>"
    out = offline.on_page_content(notebook, None, None, None)
    assert "$$" not in out and '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in out
    assert "<mfrac>" in out and "<msqrt>" in out and "&amp;amp;" not in out
    page = '<p>where <span class="arithmatex">\\(\\bar\\alpha_t\\)</span> falls</p><div class="arithmatex">\\[x_t\\]</div>'
    out = offline.on_page_content(page, None, None, None)
    assert "arithmatex" not in out and 'display="inline"' in out and 'display="block"' in out


@pytest.mark.parametrize("html, what", [
    ('<script src="https://cdn.example.org/mathjax.js"></script>', "from the internet"),
    ('<link href="//fonts.example.org/a.css" rel="stylesheet">', "from the internet"),
    ('<pre class="mermaid">flowchart LR</pre>', "mermaid"),
    ("<p>$$x$$ left over</p>", "MathJax"),
])
def test_a_page_that_needs_the_internet_fails_the_build(tmp_path, html, what):
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text(f"<html><body>{html}</body></html>")
    (tmp_path / "fine.html").write_text('<script src="assets/bundle.js"></script><a href="https://github.com">a link is fine</a>'
                                        "<script>MathJax.Hub.Config({displayMath: [['$$', '$$']]})</script>")  # settings, not maths
    with pytest.raises(PluginError, match=f"offline: page/index.html .*{what}"):
        offline.on_post_build({"site_dir": str(tmp_path)})
    (tmp_path / "page" / "index.html").unlink()
    offline.on_post_build({"site_dir": str(tmp_path)})  # the rest of the site passes
