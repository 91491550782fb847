// {DESCRIPTION}
//
// Try it:  dynbulk run --migration {ID} --dry-run --verbose

import type { Migration } from "dynbulk";

export default {
  description: "{DESCRIPTION}",
  // table: "orders", // the table, unless --table says otherwise
  // scan: { projection: ["status"] }, // read only what transform needs
  transform(item, ctx) {
    // Mutate item to change it (item.x = ...; delete item.y), return
    // DELETE (import { DELETE } from "dynbulk") to delete it, or return
    // without changing anything to leave it as it is.
  },
} satisfies Migration;
