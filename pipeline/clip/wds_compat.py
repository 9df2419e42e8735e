"""Let open_clip's training loader read WebDataset shards with webdataset >= 0.2.96.

webdataset 0.2.96 made `tar_file_expander` yield an end-of-shard marker (`{}`) by default;
`open_clip_train.data.group_by_keys_nothrow` (still in open_clip 3.3.0) indexes
`filesample["fname"]` on it and crashes with `KeyError: 'fname'` in training mode
(webdataset issue #384, open_clip issue #935). The fix the maintainers point to is
`eof_value=None`; `patch_open_clip_webdataset()` installs exactly that in the running
process (call it before `open_clip_train.data.get_data`, in every trainer process).
"""
from __future__ import annotations

import inspect

_patched = False


def needs_patch() -> bool:
    from webdataset.tariterators import tar_file_expander

    return "eof_value" in inspect.signature(tar_file_expander).parameters


def patch_open_clip_webdataset() -> bool:
    """Make `open_clip_train.data.tarfile_to_samples_nothrow` skip end-of-shard markers.

    Idempotent; returns True when the patch is (now) in place, False when not needed.
    """
    global _patched
    if _patched:
        return True
    if not needs_patch():
        return False
    import open_clip_train.data as data
    from webdataset.tariterators import tar_file_expander, url_opener

    def tarfile_to_samples_nothrow(src, handler=data.log_and_continue):
        streams = url_opener(src, handler=handler)
        files = tar_file_expander(streams, handler=handler, eof_value=None)
        return data.group_by_keys_nothrow(files, handler=handler)

    data.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow
    _patched = True
    return True
