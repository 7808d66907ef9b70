// Starts a bcoin regtest full node on loopback for coinop's tests and prints one line
// `READY p2p=PORT rpc=PORT` on stdout once it accepts peers and RPC calls.
//
// usage: node bcoin-regtest.js --p2p-port N --rpc-port N --api-key KEY
//          [--prefix DIR | --memory-from DIR] [--wallet]
// Run with NODE_PATH pointing at the node_modules scripts/lib/bcoin.sh installed, and
// NODE_BACKEND as it says (coinop_bcoin_backend). Without --prefix the chain lives in memory;
// with it, the chain survives a restart (the reconnect test). --memory-from DIR runs in memory
// from a copy of the chain an earlier run kept with --prefix DIR (the header-sync benchmark:
// the chain is generated once, and served from memory as Bitcoin Core serves headers from
// its in-memory block index, not with two disk reads per header). --wallet adds bcoin's
// wallet (its HTTP API on rpc-port+1).
// The node stops on SIGTERM/SIGINT or when its stdin closes (its owner died).
'use strict';

const bcoin = require('bcoin');

function parseArgs(argv) {
  const out = { wallet: false };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--wallet') { out.wallet = true; continue; }
    const v = argv[++i];
    if (v === undefined) throw new Error(`${a} needs a value`);
    if (a === '--p2p-port') out.p2pPort = Number(v);
    else if (a === '--rpc-port') out.rpcPort = Number(v);
    else if (a === '--api-key') out.apiKey = v;
    else if (a === '--prefix') out.prefix = v;
    else if (a === '--memory-from') out.memoryFrom = v;
    else throw new Error(`unknown option ${a}`);
  }
  if (!out.p2pPort || !out.rpcPort || !out.apiKey)
    throw new Error('--p2p-port, --rpc-port and --api-key are required');
  if (out.prefix && out.memoryFrom)
    throw new Error('--prefix and --memory-from exclude each other');
  return out;
}

// Fills the in-memory chain database of `node` (not yet open) with every record of the
// chain database bcoin kept under `prefix`: the same keys bcoin itself wrote, so the node
// opens on that chain as if it had been generated in this process.
async function loadChainInto(node, prefix) {
  const path = require('path');
  const fs = require('fs');
  const bdb = require('bdb');
  // bcoin keeps a non-mainnet chain under PREFIX/NETWORK/chain.
  const location = path.join(prefix, 'regtest', 'chain');
  if (!fs.existsSync(location))
    throw new Error(`no bcoin chain database at ${location}`);
  const src = bdb.create({ location, memory: false, createIfMissing: false });
  await src.open();
  try {
    const memdb = node.chain.db.db.binding;
    if (typeof memdb.insert !== 'function')
      throw new Error('the node chain database is not in memory');
    // leveldown's own iterator: bdb 1.0's wrapper around it predates leveldown 6 (the one
    // scripts/lib/bcoin.sh installs) and yields nothing from it.
    const it = src.binding.iterator({ keys: true, values: true });
    await new Promise((resolve, reject) => {
      const step = () => it.next((err, key, value) => {
        if (err) return reject(err);
        if (key === undefined) return it.end(() => resolve());
        memdb.insert(key, value);
        return step();
      });
      step();
    });
  } finally {
    await src.close();
  }
}

async function main() {
  const args = parseArgs(process.argv);
  const node = new bcoin.FullNode({
    network: 'regtest',
    memory: !args.prefix,
    prefix: args.prefix,
    listen: true,
    host: '127.0.0.1',
    port: args.p2pPort,
    httpHost: '127.0.0.1',
    httpPort: args.rpcPort,
    apiKey: args.apiKey,
    // Loopback only: no seeds, no outbound peers, no UPnP.
    seeds: [],
    only: [],
    maxOutbound: 1,
    workers: false,
    // The wallet plugin reads its own `wallet-` options: keep it beside the chain, on
    // loopback, on the port after the node's.
    'wallet-prefix': args.prefix,
    'wallet-http-host': '127.0.0.1',
    'wallet-http-port': args.rpcPort + 1,
    logLevel: 'warning',
    logConsole: false,
    // --memory-from: room for every chain entry in bcoin's entry cache (see below).
    ...(args.memoryFrom ? { entryCache: 1000000 } : {}),
  });
  if (args.wallet) {
    node.use(bcoin.wallet.plugin);
    node.require('walletdb');
  }
  const stop = async () => {
    try { await node.close(); } finally { process.exit(0); }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
  await node.ensure();
  if (args.memoryFrom)
    await loadChainInto(node, args.memoryFrom);
  await node.open();
  if (args.memoryFrom) {
    // Read every best-chain entry once, so `getheaders` is answered from bcoin's entry
    // cache rather than by decoding (and hashing) each entry on the way out.
    for (let h = 0; h <= node.chain.height; h++)
      await node.chain.getEntryByHeight(h);
  }
  await node.connect();
  process.stdout.write(`READY p2p=${args.p2pPort} rpc=${args.rpcPort}\n`);
}

main().catch((e) => {
  process.stderr.write(`bcoin-regtest: ${e.stack || e}\n`);
  process.exit(1);
});
