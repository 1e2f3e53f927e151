//! Search parameters: definitions, value extraction at write time, and query parsing.

mod datetime;
mod extract;
mod params;
mod query;

pub use datetime::{DateRange, LOCAL_OFFSET_SECS, format_instant, parse_date_range};
pub use extract::{IndexEntry, IndexValue, extract, normalize_string, patients_of, split_reference};
pub use params::{ParamKind, SearchParamDef, find_param, is_single_valued_date, params_for};
pub use query::{
    DEFAULT_COUNT, Filter, IncludeSpec, MAX_COUNT, MAX_OFFSET, MAX_VALUES, Modifier, Prefix, SearchQuery, SearchValue,
    SortKey, SortParam, Summary, TotalMode, parse_search,
};
