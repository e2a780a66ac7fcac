"""Reading, validating and splitting user data files."""

from tuneforge.data.readers import read_records
from tuneforge.data.splits import stratified_split

__all__ = ["read_records", "stratified_split"]
