// Starts a bcoin regtest full node on loopback for coinop's tests and prints one line
// `READY p2p=PORT rpc=PORT` on stdout once it accepts peers and RPC calls.
//
// usage: node bcoin-regtest.js --p2p-port N --rpc-port N --api-key KEY [--prefix DIR] [--wallet]
// Run with NODE_PATH pointing at the node_modules scripts/lib/bcoin.sh installed, and
// NODE_BACKEND=js. Without --prefix the chain lives in memory; with it, the chain survives a
// restart (the reconnect test). --wallet adds bcoin's wallet (its HTTP API on rpc-port+1).
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
    else throw new Error(`unknown option ${a}`);
  }
  if (!out.p2pPort || !out.rpcPort || !out.apiKey)
    throw new Error('--p2p-port, --rpc-port and --api-key are required');
  return out;
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
  await node.open();
  await node.connect();
  process.stdout.write(`READY p2p=${args.p2pPort} rpc=${args.rpcPort}\n`);
}

main().catch((e) => {
  process.stderr.write(`bcoin-regtest: ${e.stack || e}\n`);
  process.exit(1);
});
