"""replace_files planning and in-memory application (spec 7.6)."""

from __future__ import annotations

import copy

import pytest

from davcoll.manifest import Dir, Manifest, parse_manifest
from davcoll.storage.catalog import BadRequest, NotFound
from davcoll.storage.replace_files import (
    CURRENT,
    DELETE,
    MANIFEST_TEXT,
    PDH,
    ReplaceOp,
    apply_to_tree,
    plan_replace_files,
)

FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"  # "foo"
BAR = "37b51d194a7513e45b56f6524f2d51f2+3"  # "bar"
OTHER_PDH = "1f4b0bc7583c2a7f9102c395f4ffc5e3+45"

BASE = f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"


def tree(text: str) -> Dir:
    return parse_manifest(text).root


def text(root: Dir) -> str:
    return Manifest(root).to_text()


def no_pdh(pdh: str) -> Dir:
    raise NotFound(pdh)


def run(base: str, rf: dict[str, str], manifest_text: str = "", load_pdh=no_pdh) -> str:
    ops = plan_replace_files(rf, manifest_text_supplied=bool(manifest_text))
    root = tree(base)
    before = copy.deepcopy(root)
    out = apply_to_tree(root, ops, new_content=tree(manifest_text) if manifest_text else None, load_pdh=load_pdh)
    assert root == before, "apply_to_tree mutated its input"
    assert out is not root
    return text(out)


# --- planning ---------------------------------------------------------------


def test_plan_classifies_sources_and_orders_deletions_first():
    ops = plan_replace_files(
        {
            "/z": "current/a",
            "/y": f"{OTHER_PDH}/sub/f",
            "/x": "manifest_text/",
            "/gone": "",
        },
        manifest_text_supplied=True,
    )
    assert ops[0] == ReplaceOp("/gone", DELETE, None, "")
    by_target = {op.target: op for op in ops}
    assert by_target["/z"] == ReplaceOp("/z", CURRENT, None, "a")
    assert by_target["/y"] == ReplaceOp("/y", PDH, OTHER_PDH, "sub/f")
    assert by_target["/x"] == ReplaceOp("/x", MANIFEST_TEXT, None, "")
    # grouped by source id after the deletions
    srcids = [op.source_pdh or op.kind for op in ops[1:]]
    assert srcids == sorted(srcids)


@pytest.mark.parametrize(
    "target",
    ["", "a", "a/b", "/a/", "//a", "/a//b", "/.", "/..", "/a/.", "/a/../b", "/a/./b", "/a/.."],
)
def test_bad_targets_are_400(target):
    with pytest.raises(BadRequest):
        plan_replace_files({target: ""}, manifest_text_supplied=False)


@pytest.mark.parametrize(
    "source",
    ["current", "manifest_text", OTHER_PDH, "cur/a", "nothex+3/a", "current/a/../b", "current/./a", "current/a//b", 7],
)
def test_bad_sources_are_400(source):
    with pytest.raises(BadRequest):
        plan_replace_files({"/t": source}, manifest_text_supplied=False)


def test_source_path_slashes_are_canonicalised():
    (op,) = plan_replace_files({"/t": "current//a/b/"}, manifest_text_supplied=False)
    assert op.source_path == "a/b"
    (op,) = plan_replace_files({"/t": "current/"}, manifest_text_supplied=False)
    assert op.source_path == ""


def test_ancestor_with_content_rejected():
    with pytest.raises(BadRequest):
        plan_replace_files({"/a": "current/b", "/a/c": ""}, manifest_text_supplied=False)
    with pytest.raises(BadRequest):
        plan_replace_files({"/": "current/b", "/x": "current/a"}, manifest_text_supplied=False)
    # a deleting ancestor is fine, and so are siblings sharing a name prefix
    plan_replace_files({"/a": "", "/a/c": "current/b"}, manifest_text_supplied=False)
    plan_replace_files({"/": "", "/a/c": "current/b"}, manifest_text_supplied=False)
    plan_replace_files({"/a": "current/b", "/ab/c": "current/b"}, manifest_text_supplied=False)


def test_unused_manifest_text_rejected():
    with pytest.raises(BadRequest):
        plan_replace_files({"/a": "current/b"}, manifest_text_supplied=True)
    with pytest.raises(BadRequest):
        plan_replace_files({"/a": ""}, manifest_text_supplied=True)


def test_non_mapping_rejected():
    with pytest.raises(BadRequest):
        plan_replace_files([("/a", "")], manifest_text_supplied=False)  # type: ignore[arg-type]


# --- application ------------------------------------------------------------


def test_delete_file_and_directory_recursively():
    assert run(BASE, {"/a": ""}) == f". {BAR} 0:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"
    assert run(BASE, {"/d": ""}) == f". {FOO} {BAR} 0:3:a 3:3:b\n"


def test_delete_missing_target_is_noop():
    assert run(BASE, {"/nope": ""}) == BASE
    assert run(BASE, {"/a/under/file": ""}) == BASE  # parent is a file


def test_delete_last_file_keeps_empty_directory():
    assert run(BASE, {"/d/e/y": ""}) == f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n"


def test_delete_root_clears_everything():
    assert run(BASE, {"/": ""}) == ""


def test_swap_via_current_sees_pre_request_content():
    assert run(BASE, {"/a": "current/b", "/b": "current/a"}) == f". {BAR} {FOO} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"


def test_move_directory_and_mkdir_p():
    out = run(BASE, {"/n1/n2/moved": "current/d", "/d": ""})
    assert out == f". {FOO} {BAR} 0:3:a 3:3:b\n./n1/n2/moved {FOO} 0:3:x\n./n1/n2/moved/e {BAR} 0:3:y\n"


def test_copy_keeps_source():
    out = run(BASE, {"/d/e/a-copy": "current/a"})
    assert out == f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {FOO} {BAR} 0:3:a-copy 3:3:y\n"


def test_target_replaced_wholesale_file_by_dir_and_dir_by_file():
    out = run(BASE, {"/a": "current/d/e"})
    assert out == f". {BAR} 0:3:b\n./a {BAR} 0:3:y\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"
    out = run(BASE, {"/d": "current/a"})
    assert out == f". {FOO} {BAR} 0:3:a 3:3:b 0:3:d\n"


def test_missing_current_source_is_400():
    with pytest.raises(BadRequest):
        run(BASE, {"/t": "current/nope"})
    with pytest.raises(BadRequest):
        run(BASE, {"/t": "current/a/x"})  # through a file


def test_parent_is_a_file_is_400():
    with pytest.raises(BadRequest):
        run(BASE, {"/a/sub": "current/b"})
    with pytest.raises(BadRequest):
        run(BASE, {"/a/deeper/sub": "current/b"})


def test_manifest_text_source_file_dir_and_root():
    new = f". {BAR} 0:3:new\n./nd {FOO} 0:3:z\n"
    assert run(BASE, {"/d/e/up": "manifest_text/new"}, new) == (
        f". {FOO} {BAR} 0:3:a 3:3:b\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:up 0:3:y\n"
    )
    assert run(BASE, {"/x/nd": "manifest_text/nd"}, new) == BASE + f"./x/nd {FOO} 0:3:z\n"
    assert run(BASE, {"/": "manifest_text/"}, new) == new
    with pytest.raises(BadRequest):
        run(BASE, {"/t": "manifest_text/missing"}, new)


def test_mkcol_via_manifest_text_empty_dir():
    new = "./newdir d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n"
    assert run(BASE, {"/newdir": "manifest_text/newdir"}, new) == BASE + new


def test_pdh_source_loaded_once_and_missing_is_404():
    other = f"./s {BAR} 0:3:f\n"
    calls: list[str] = []

    def load(pdh: str) -> Dir:
        calls.append(pdh)
        if pdh != OTHER_PDH:
            raise NotFound(pdh)
        return tree(other)

    out = run(BASE, {"/c1": f"{OTHER_PDH}/s/f", "/c2": f"{OTHER_PDH}/s"}, load_pdh=load)
    assert out == f". {FOO} {BAR} 0:3:a 3:3:b 3:3:c1\n./c2 {BAR} 0:3:f\n./d {FOO} 0:3:x\n./d/e {BAR} 0:3:y\n"
    assert calls == [OTHER_PDH]
    with pytest.raises(NotFound):
        run(BASE, {"/c": "d41d8cd98f00b204e9800998ecf8427e+0/x"}, load_pdh=load)
    with pytest.raises(BadRequest):
        run(BASE, {"/c": f"{OTHER_PDH}/nope"}, load_pdh=load)


def test_root_target_starts_from_empty_so_current_sees_nothing():
    # When "/" is a target the controller starts from an empty collection,
    # and current/ snapshots are taken from that.
    with pytest.raises(BadRequest):
        run(BASE, {"/": "", "/keep": "current/a"})
    assert run(BASE, {"/": "", "/n/f": "manifest_text/f"}, f". {BAR} 0:3:f\n") == f"./n {BAR} 0:3:f\n"


def test_root_target_with_file_source_is_400():
    with pytest.raises(BadRequest):
        run(BASE, {"/": "manifest_text/f"}, f". {BAR} 0:3:f\n")


def test_result_does_not_alias_sources_into_input():
    root = tree(BASE)
    ops = plan_replace_files({"/copy": "current/d"}, manifest_text_supplied=False)
    out = apply_to_tree(root, ops, new_content=None, load_pdh=no_pdh)
    assert out["copy"] is not root["d"]
    out["copy"]["added"] = ()
    assert "added" not in root["d"]
