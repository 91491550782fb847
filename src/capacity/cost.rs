//! The cost model: what DynamoDB charges for a read or a write, in capacity
//! units, and the Scan page size that keeps one page a small share of a
//! second's read budget. Pure functions; the budgets that charge these costs
//! are in [`super::limiter`].

/// Bytes one read capacity unit covers: 4 KB strongly consistent, 8 KB eventually consistent.
pub fn bytes_per_rcu(consistent: bool) -> f64 {
    if consistent {
        4096.0
    } else {
        8192.0
    }
}

/// Largest Scan page: 1 MB.
pub const MAX_PAGE_BYTES: f64 = 1024.0 * 1024.0;

/// Share of one second's read budget one Scan page may cost.
pub const PAGE_SHARE: f64 = 0.1;

/// The Scan `Limit` that keeps one page at most [`PAGE_SHARE`] of a second's read
/// budget (and within the bucket's burst), given the average item size. A full
/// 1 MB page costs 128 RCU eventually consistent, 256 strongly consistent.
/// `None` (unlimited reads): no cap beyond the in-flight page size.
pub fn page_limit(read_limit: Option<f64>, avg_item_bytes: f64, consistent: bool) -> Option<i32> {
    let limit = read_limit?;
    let page_units = (limit * PAGE_SHARE).max(0.5);
    let page_bytes = (page_units * bytes_per_rcu(consistent)).min(MAX_PAGE_BYTES);
    let items = (page_bytes / avg_item_bytes.max(1.0)).floor();
    Some(items.clamp(1.0, 10_000.0) as i32)
}

/// Write units an item of `bytes` costs: one per KB, rounded up.
pub fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Read units a single-item read of `bytes` costs.
pub fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// An operation's output that says what it consumed (requested with
/// `ReturnConsumedCapacity::Total`): what the budgets are charged.
pub(crate) trait Consumed {
    /// Capacity units the call consumed, if DynamoDB said.
    fn consumed_units(&self) -> Option<f64>;
}

macro_rules! consumed {
    ($($output:ty),*) => {$(
        impl Consumed for $output {
            fn consumed_units(&self) -> Option<f64> {
                self.consumed_capacity().and_then(|c| c.capacity_units())
            }
        }
    )*};
}

consumed!(
    aws_sdk_dynamodb::operation::scan::ScanOutput,
    aws_sdk_dynamodb::operation::query::QueryOutput,
    aws_sdk_dynamodb::operation::get_item::GetItemOutput,
    aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
    aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput,
    aws_sdk_dynamodb::operation::put_item::PutItemOutput
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limit_keeps_a_page_within_a_tenth_of_the_budget() {
        // 500 RCU/s, 1 KB items, eventually consistent: 50 RCU = 400 KB = 400 items.
        assert_eq!(page_limit(Some(500.0), 1024.0, false), Some(400));
        // Strongly consistent pages cost twice as much.
        assert_eq!(page_limit(Some(500.0), 1024.0, true), Some(200));
        // Never more than a 1 MB page.
        assert_eq!(page_limit(Some(100_000.0), 100.0, false), Some(10_000));
        assert_eq!(page_limit(Some(100_000.0), 1024.0, false), Some(1024));
        // Tiny budgets still make progress.
        assert_eq!(page_limit(Some(1.0), 300_000.0, false), Some(1));
        assert_eq!(page_limit(None, 1024.0, false), None);
    }

    #[test]
    fn unit_costs_follow_dynamodb_rounding() {
        assert_eq!(write_units(1), 1.0);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(4096, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(100, false), 0.5);
    }
}
