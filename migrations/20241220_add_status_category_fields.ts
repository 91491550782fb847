// Derives statusCategory from status: the reference migration.
//
//   status                   statusCategory
//   pending, processing      active
//   shipped, delivered       done
//   cancelled, refunded      closed
//   any other string         other
//   missing or not a string  (unchanged)
//
// Idempotent: an item whose statusCategory already matches is left alone
// (dynbulk writes only attributes whose value changed).
//
// Run it:  dynbulk run --migration 20241220_add_status_category_fields --dry-run

import type { Migration } from "dynbulk";

type Category = "active" | "done" | "closed" | "other";

// The category for a status, as the application's new version computes it.
function category(status: string): Category {
  switch (status) {
    case "pending":
    case "processing":
      return "active";
    case "shipped":
    case "delivered":
      return "done";
    case "cancelled":
    case "refunded":
      return "closed";
    default:
      return "other";
  }
}

export default {
  description: "Add statusCategory (active/done/closed/other) derived from status",
  table: "orders",
  transform(item) {
    // Reading status guards the write on it: if the application changes the
    // order's status meanwhile, dynbulk re-reads it and runs this again.
    if (typeof item.status !== "string") {
      // Nothing to derive from; the application sets both when it writes status.
      return;
    }
    item.statusCategory = category(item.status);
  },
} satisfies Migration;
