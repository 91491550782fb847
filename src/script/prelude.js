// dynbulk's script prelude: evaluated once in every engine before any
// migration module. It returns the internals the engine drives (the read
// tracker around each item, the DELETE marker, NumberValue), freezes the
// clock and takes Math.random away. Not a module: its names stay private.
(function setup(now, nativeLog) {
  "use strict";

  // Returned by a transform to delete the item.
  const DELETE = Object.freeze(Object.create(null, {
    [Symbol.toStringTag]: { value: "dynbulk.DELETE" },
  }));

  const DECIMAL = /^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

  // A DynamoDB number that a JS number cannot hold exactly (more than ~17
  // significant digits, or beyond a double's range): the decimal text, kept.
  class NumberValue {
    constructor(value) {
      const text = typeof value === "string" ? value.trim() : String(value);
      if (!DECIMAL.test(text)) {
        throw new TypeError(`NumberValue: ${JSON.stringify(text)} is not a decimal number`);
      }
      this.value = text;
      Object.freeze(this);
    }
    valueOf() { return Number(this.value); }
    toString() { return this.value; }
    toJSON() { return this.value; }
    static from(value) { return new NumberValue(value); }
  }

  // The clock is frozen at the time the process loaded its migrations: every
  // item of a run sees the same Date.now() and new Date().
  const RealDate = Date;
  function FrozenDate(...args) {
    if (!new.target) return new RealDate(now).toString();
    return args.length === 0 ? new RealDate(now) : new RealDate(...args);
  }
  FrozenDate.prototype = RealDate.prototype;
  FrozenDate.now = () => now;
  FrozenDate.parse = RealDate.parse;
  FrozenDate.UTC = RealDate.UTC;
  globalThis.Date = FrozenDate;
  Math.random = function random() {
    throw new Error("Math.random() is not available to migrations: a transform must decide the same way every time it sees an item (it runs again after a write conflict)");
  };

  const show = (v) => {
    if (typeof v === "string") return v;
    try {
      const s = JSON.stringify(v, (_, x) => (typeof x === "bigint" ? x.toString()
        : x instanceof Set ? [...x] : x instanceof Uint8Array ? `<${x.length} bytes>` : x));
      return s === undefined ? String(v) : s;
    } catch (_) {
      return String(v);
    }
  };
  const log = (...args) => nativeLog(args.map(show).join(" "));
  globalThis.console = Object.freeze({ log, info: log, warn: log, error: log, debug: log });

  // The read tracker. One item is transformed at a time per engine. The
  // traps run several times per item and `run` once per item, so they are
  // written for QuickJS's interpreter: no helper calls and no allocation on
  // the common path (`a[a.length] = k`, not `a.push(k)`; arrays emptied and
  // reused, not created).
  const hasOwn = Object.prototype.hasOwnProperty;
  const ObjectProto = Object.prototype;
  const reads = [];
  const writes = [];
  // What `run` returns, reused: [status, reads, writes, enumerated, what, where, defined].
  const result = [0, reads, writes, false, "", null, ""];
  let all = false;
  // The target of the item being transformed: a proxy whose target is not
  // this one belongs to an item whose transform has returned.
  let current = null;
  // The stack where the transform first changed a key attribute or assigned
  // a number DynamoDB cannot store, by attribute name: the item's dead
  // letter names that line.
  let where = null;
  // The run's key attribute names, as an object without prototype: name -> true.
  let keys = null;
  let keysCtx = null;
  const keysOf = new WeakMap();
  const noKeys = Object.freeze(Object.create(null));
  const gone = () => {
    throw new TypeError("this item's transform has returned: a migration cannot keep an item and use it later");
  };
  const mark = (k) => {
    if (where === null) where = {};
    if (!hasOwn.call(where, k)) where[k] = new Error().stack;
  };
  // A read of `k`. Object.prototype's members (toString, hasOwnProperty...)
  // are not attributes unless the item has one of that name.
  const handler = {
    get(t, k) {
      if (t !== current) gone();
      if (typeof k === "string" && (!(k in ObjectProto) || hasOwn.call(t, k))) reads[reads.length] = k;
      return t[k];
    },
    has(t, k) {
      if (t !== current) gone();
      if (typeof k === "string" && (!(k in ObjectProto) || hasOwn.call(t, k))) reads[reads.length] = k;
      return k in t;
    },
    getOwnPropertyDescriptor(t, k) {
      if (t !== current) gone();
      if (typeof k === "string" && (!(k in ObjectProto) || hasOwn.call(t, k))) reads[reads.length] = k;
      return Reflect.getOwnPropertyDescriptor(t, k);
    },
    ownKeys(t) {
      if (t !== current) gone();
      all = true;
      return Reflect.ownKeys(t);
    },
    set(t, k, v) {
      if (t !== current) gone();
      if (typeof k === "string") {
        writes[writes.length] = k;
        // NaN and the infinities are the numbers with v - v !== 0.
        if (keys[k] === true || (typeof v === "number" && v - v !== 0)) mark(k);
      }
      t[k] = v;
      return true;
    },
    defineProperty(t, k, d) {
      if (t !== current) gone();
      if (typeof k === "string") {
        writes[writes.length] = k;
        const v = d.value;
        if (keys[k] === true || (typeof v === "number" && v - v !== 0)) mark(k);
      }
      return Reflect.defineProperty(t, k, d);
    },
    deleteProperty(t, k) {
      if (t !== current) gone();
      if (typeof k === "string") {
        writes[writes.length] = k;
        if (keys[k] === true) mark(k);
      }
      return delete t[k];
    },
    setPrototypeOf() { return false; },
  };

  const describe = (r) => {
    if (r === null) return "null";
    if (typeof r === "object" && typeof r.then === "function") {
      return "a Promise (transform must be synchronous: not async, no await)";
    }
    if (typeof r === "object") return "an object other than the item";
    return `a ${typeof r} (${show(r)})`;
  };

  // Runs migration.transform on the item `target` through the tracker.
  // Returns status | 4 when the item was enumerated | 8 when `mark` noted a
  // write: status 0 applies the item's changes, 1 deletes it, 2 is a return
  // value that is neither. The names read and written are in `reads` and
  // `writes`, and `result` holds [status, reads, writes, enumerated, what,
  // where, defined] (`what` describes a bad return value, `defined` is the
  // transform's file:line; `where` is null or the stacks of the writes
  // `mark` noted); all three are reused: read them before the next call. A
  // throw leaves `current` set until the next call, when no script runs.
  function run(migration, target, ctx) {
    reads.length = 0;
    writes.length = 0;
    all = false;
    where = null;
    if (ctx !== keysCtx) {
      keysCtx = ctx;
      keys = keysOf.get(ctx) || noKeys;
    }
    current = target;
    const proxy = new Proxy(target, handler);
    const r = migration.transform(proxy, ctx);
    current = null;
    const status = r === undefined || r === proxy ? 0 : r === DELETE ? 1 : 2;
    result[0] = status;
    result[3] = all;
    result[5] = where;
    if (status === 2) {
      result[4] = describe(r);
      result[6] = at(migration.transform);
    }
    return status | (all ? 4 : 0) | (where === null ? 0 : 8);
  }

  // The value of an own property, or `absent`.
  const absent = Symbol("absent");
  const ownValue = (t, k) => (hasOwn.call(t, k) ? t[k] : absent);

  // Where a function is defined, as file:line ("" when unknown).
  const at = (f) => (typeof f === "function" && f.fileName && f.lineNumber
    ? `${f.fileName}:${f.lineNumber}` : "");

  // The transform's second argument for a run on `tableName`, whose key
  // attributes are `keyNames`.
  const context = (tableName, dryRun, keyNames) => {
    const c = Object.freeze({ tableName, dryRun, log });
    const names = Object.create(null);
    for (const k of keyNames) names[k] = true;
    keysOf.set(c, Object.freeze(names));
    return c;
  };

  const internals = Object.freeze({
    DELETE, NumberValue, run, ownValue, absent, context, reads, writes, result,
    setValues: (s) => Array.from(s),
  });
  Object.defineProperty(globalThis, Symbol.for("dynbulk"), { value: internals });
  return internals;
})
