"""Column names and the schema expected at each stage boundary.

Every data source is mapped onto these canonical frames before any stage runs, so the
stages never see source-specific names. ``user_id``/``item_id`` are business ids;
``user_idx``/``item_idx`` are the contiguous indices that ``implicit`` needs.
"""

from __future__ import annotations

import polars as pl

# --- transactions -------------------------------------------------------------------------
USER = "user_id"
BASKET = "basket_id"
DAY = "day"  # 1-based day number of the purchase (day 1 = first day of the data)
ITEM = "item_id"
QTY = "quantity"
SALES = "sales_value"
STORE = "store_id"
RETAIL_DISC = "retail_disc"
TRANS_TIME = "trans_time"  # HHMM as an integer, e.g. 1631
WEEK = "week"
COUPON_DISC = "coupon_disc"
COUPON_MATCH_DISC = "coupon_match_disc"

TRANSACTIONS = pl.Schema(
    {
        USER: pl.Int64,
        BASKET: pl.Int64,
        DAY: pl.Int32,
        ITEM: pl.Int64,
        QTY: pl.Int64,
        SALES: pl.Float64,
        STORE: pl.Int64,
        RETAIL_DISC: pl.Float64,
        TRANS_TIME: pl.Int32,
        WEEK: pl.Int32,
        COUPON_DISC: pl.Float64,
        COUPON_MATCH_DISC: pl.Float64,
    }
)
TRANSACTION_KEYS = (USER, BASKET, DAY, ITEM, WEEK)  # never null

# --- items (product attributes) -----------------------------------------------------------
MANUFACTURER = "manufacturer"
DEPARTMENT = "department"
BRAND = "brand"
CATEGORY = "category"  # COMMODITY_DESC / product_category
SUB_CATEGORY = "sub_category"  # SUB_COMMODITY_DESC / product_type
PACKAGE_SIZE = "package_size"  # CURR_SIZE_OF_PRODUCT / package_size

ITEMS = pl.Schema(
    {
        ITEM: pl.Int64,
        MANUFACTURER: pl.Int64,
        DEPARTMENT: pl.String,
        BRAND: pl.String,
        CATEGORY: pl.String,
        SUB_CATEGORY: pl.String,
        PACKAGE_SIZE: pl.String,
    }
)
ITEM_ATTRIBUTES = (DEPARTMENT, BRAND, CATEGORY, SUB_CATEGORY, PACKAGE_SIZE)

# --- users (household demographics) -------------------------------------------------------
AGE = "age"
INCOME = "income"
HOME_OWNERSHIP = "home_ownership"
MARITAL_STATUS = "marital_status"
HOUSEHOLD_SIZE = "household_size"
HOUSEHOLD_COMP = "household_comp"
KIDS_COUNT = "kids_count"

USERS = pl.Schema(
    {
        USER: pl.Int64,
        AGE: pl.String,
        INCOME: pl.String,
        HOME_OWNERSHIP: pl.String,
        MARITAL_STATUS: pl.String,
        HOUSEHOLD_SIZE: pl.String,
        HOUSEHOLD_COMP: pl.String,
        KIDS_COUNT: pl.String,
    }
)
DEMOGRAPHICS = tuple(name for name in USERS.names() if name != USER)

# --- catalogue (prefilter output) ---------------------------------------------------------
BUYERS = "buyers"  # distinct users who bought the item
USER_SHARE = "user_share"  # buyers / distinct users in the window
UNIT_PRICE = "unit_price"  # the configured price statistic of sales_value / max(quantity, 1)
QTY_SOLD = "quantity_sold"

CATALOGUE = pl.Schema(
    {
        ITEM: pl.Int64,
        QTY_SOLD: pl.Int64,
        BUYERS: pl.UInt32,
        USER_SHARE: pl.Float64,
        UNIT_PRICE: pl.Float64,
    }
)

# --- stage 1 / stage 2 --------------------------------------------------------------------
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
BASKET_IDX = "basket_idx"  # dense rank of basket_id among stage 1's fit lines (order kept)

# Stage 1's fit lines in index space (``ids.compact_lines``): 16 bytes a line where the
# business ids took 32 (issue #17: the 100x refit's peak).
FIT_LINES = pl.Schema(
    {
        USER_IDX: pl.UInt32,
        BASKET_IDX: pl.UInt32,
        DAY: pl.Int16,
        ITEM_IDX: pl.UInt32,
        WEEK: pl.Int16,
    }
)
GENERATOR = "generator"
SCORE = "score"
RANK = "rank"  # 1 = best
TARGET = "target"  # 1 if the user bought the candidate in the target window

# One row per (user, item, generator): what every candidate generator returns.
GENERATED = pl.Schema(
    {USER: pl.Int64, ITEM: pl.Int64, GENERATOR: pl.String, SCORE: pl.Float32, RANK: pl.Int32}
)

# The union of the generators, one row per (user, item): ``{generator}_score`` and
# ``{generator}_rank`` for each generator in ``GENERATORS`` (null where that generator did
# not propose the item), plus ``n_generators``.
GENERATORS = ("als", "own", "copurchase", "popular", "trend")
N_GENERATORS = "n_generators"


def score_col(generator: str) -> str:
    """Column of the union that holds ``generator``'s score."""
    return f"{generator}_score"


def rank_col(generator: str) -> str:
    """Column of the union that holds ``generator``'s rank (1 = best)."""
    return f"{generator}_rank"


CANDIDATES = pl.Schema(
    {
        USER: pl.Int64,
        ITEM: pl.Int64,
        **{score_col(g): pl.Float32 for g in GENERATORS},
        **{rank_col(g): pl.Int32 for g in GENERATORS},
        N_GENERATORS: pl.UInt8,
    }
)

# Final output of the batch: the top-k per user, best first (rank 1..k).
RECOMMENDATIONS = pl.Schema({USER: pl.Int64, ITEM: pl.Int64, RANK: pl.Int32, SCORE: pl.Float32})

# --- plans: promotions and campaigns known ahead (optional; issue #26) ----------------------
# Every plan table is on the transactions' time axis: ``week`` is the transactions' week and
# every day (``start_day``, ``end_day``, a redemption's ``day``) counts like their ``day``.
DISPLAY = "display"  # in-store display location code as given; "0" = not on display
MAILER = "mailer"  # weekly mailer location code as given; "0" = not in the mailer
ON_DISPLAY = "on_display"  # display is set and not "0" (derived, cheap)
ON_MAILER = "on_mailer"  # mailer is set and not "0" (derived, cheap)
CAMPAIGN = "campaign_id"
CAMPAIGN_TYPE = "campaign_type"  # e.g. "Type A" (bundled) or "TypeA" (classic CSV)
START_DAY = "start_day"  # first day of the campaign (may be < 1: it began before the data)
END_DAY = "end_day"  # last day of the campaign, inclusive
COUPON = "coupon_id"  # COUPON_UPC / coupon_upc

# Promotions as read from a file: one row per (item, store, week) on display or in the mailer.
PROMOTION_CODES = pl.Schema(
    {ITEM: pl.Int64, STORE: pl.Int64, WEEK: pl.Int32, DISPLAY: pl.String, MAILER: pl.String}
)
# The canonical promotions frame: the codes plus the two flags features use.
PROMOTIONS = pl.Schema(
    [*PROMOTION_CODES.items(), (ON_DISPLAY, pl.Boolean), (ON_MAILER, pl.Boolean)]
)
NOT_PROMOTED = "0"
"""The code meaning "not on display"/"not in the mailer" (bundled, classic, synthetic)."""

# Households a campaign was sent to.
CAMPAIGNS = pl.Schema({CAMPAIGN: pl.Int64, USER: pl.Int64})
CAMPAIGN_PERIODS = pl.Schema(
    {CAMPAIGN: pl.Int64, CAMPAIGN_TYPE: pl.String, START_DAY: pl.Int32, END_DAY: pl.Int32}
)
# Items a campaign's coupons apply to (a coupon covers one or many items).
COUPONS = pl.Schema({CAMPAIGN: pl.Int64, COUPON: pl.Int64, ITEM: pl.Int64})
# One row per coupon redeemed; the bundled and classic data name the coupon, not the item.
COUPON_REDEMPTIONS = pl.Schema(
    {USER: pl.Int64, CAMPAIGN: pl.Int64, COUPON: pl.Int64, ITEM: pl.Int64, DAY: pl.Int32}
)
