// The tests' and benches' TypeScript twin of the reference migration
// (tests/common/status_category.rs): same id, same transform, same mapping as
// the sample generator's `category`.

type Category = "active" | "done" | "closed" | "other";

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
  id: "20241220_add_status_category_fields",
  description: "Add statusCategory (active/done/closed/other) derived from status",
  table: "orders",
  transform(item: { status?: unknown; statusCategory?: string }) {
    if (typeof item.status !== "string") return;
    item.statusCategory = category(item.status);
  },
};
