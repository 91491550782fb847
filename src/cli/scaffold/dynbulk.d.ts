// Types for dynbulk script migrations, written by `dynbulk init`. Editors and
// `tsc --noEmit` use them to check the migrations in this folder; dynbulk
// itself only strips types and never reads this file.
//
// A migration is a file YYYYMMDD_description.ts (or .js) whose default export
// is a Migration:
//
//   import type { Migration } from "dynbulk";
//   export default {
//     description: "Add statusCategory derived from status",
//     transform(item) {
//       if (typeof item.status !== "string") return;
//       item.statusCategory = item.status === "shipped" ? "done" : "active";
//     },
//   } satisfies Migration;

declare module "dynbulk" {
  /**
   * A DynamoDB number that a JS number cannot hold exactly (more than about
   * 17 significant digits, or out of a double's range): its decimal text,
   * kept whole. Compares and prints like a number (`valueOf`, `toString`);
   * assign it back, or a new `NumberValue("123.4500000000000000001")`, to
   * write that exact number. Numbers that convert exactly arrive as `number`.
   */
  export class NumberValue {
    constructor(value: string | number);
    /** The decimal text, as DynamoDB holds it. */
    readonly value: string;
    valueOf(): number;
    toString(): string;
    toJSON(): string;
    static from(value: string | number): NumberValue;
  }

  /** Returned by `transform`, deletes the item. */
  export const DELETE: Delete;
  /** The type of {@link DELETE}. */
  export interface Delete {
    readonly [Symbol.toStringTag]: "dynbulk.DELETE";
  }

  /**
   * An attribute value, in the DocumentClient's shapes: S -> string,
   * N -> number or NumberValue, BOOL -> boolean, NULL -> null, B -> Uint8Array,
   * SS/NS/BS -> Set, L -> array, M -> object.
   */
  export type Value =
    | string
    | number
    | NumberValue
    | boolean
    | null
    | Uint8Array
    | Set<string>
    | Set<number | NumberValue>
    | Set<Uint8Array>
    | Value[]
    | { [name: string]: Value };

  /**
   * The item, a plain object to read and mutate: assign an attribute to set
   * it, `delete item.x` to remove it. Every attribute the transform reads
   * (including one it finds missing) or changes guards the write; listing
   * the attributes (Object.keys, spread, JSON.stringify) reads them all.
   */
  export type Item = { [attribute: string]: Value | undefined };

  /** What `transform` gets besides the item (the old runner's MigrationContext). */
  export interface Context {
    /** The table being migrated. */
    readonly tableName: string;
    /** True in a dry run; dynbulk writes nothing then, whatever the transform does. */
    readonly dryRun: boolean;
    /** Writes to dynbulk's log (rate-limited). */
    log(...args: unknown[]): void;
  }

  /** What the scan reads; all optional. */
  export interface ScanOptions {
    /** Attributes to read (key attributes are added). Every attribute the transform reads or writes must be listed. */
    projection?: string[];
    /** A filter expression: only matching items reach the transform, and a write happens only while the item still matches. */
    filter?: string;
    /** Names used by `filter` ("#s": "status"). */
    names?: Record<string, string>;
    /** Values used by `filter` (":x": "archived"). */
    values?: Record<string, Value>;
    /** Strongly consistent reads (twice the read cost). */
    consistentRead?: boolean;
  }

  /** A migration module's default export. */
  export interface Migration {
    /** Must equal the file name without extension, if given. */
    id?: string;
    /** One sentence saying what the migration does and why. */
    description: string;
    /** The table, unless the operator passes --table. */
    table?: string;
    scan?: ScanOptions;
    /**
     * Decides what happens to one item; synchronous and pure (no I/O, a
     * frozen clock, no Math.random: it runs again after a write conflict).
     * Return nothing (or the item) to write what changed (nothing changed:
     * unchanged), DELETE to delete the item. Throwing, returning anything
     * else, or changing a key attribute fails the item: it goes to the
     * dead-letter file with the message and the run goes on.
     */
    transform(item: Item, ctx: Context): void | Item | Delete;
  }
}

// console.log and friends go to dynbulk's log, like ctx.log.
declare var console: {
  log(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  debug(...args: unknown[]): void;
};
