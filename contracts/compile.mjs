// Compiles IdentityRegistry.sol with the pinned solc-js and writes its ABI and bytecode to
// p2pnet/registry/IdentityRegistry.json (committed; tests/test_registry_contract.py checks that
// recompiling gives the same file). Usage: node compile.mjs [OUTPUT_PATH]
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const SOURCE = "IdentityRegistry.sol";
const CONTRACT = "IdentityRegistry";
const output = process.argv[2] ?? join(here, "..", "p2pnet", "registry", "IdentityRegistry.json");

const input = {
  language: "Solidity",
  sources: { [SOURCE]: { content: readFileSync(join(here, SOURCE), "utf8") } },
  settings: {
    // cancun: what public EVM chains (and anvil) run today; a later default could use opcodes
    // some of them lack.
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

const result = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (result.errors ?? []).filter((e) => e.severity === "error");
for (const e of result.errors ?? []) {
  process.stderr.write(e.formattedMessage + "\n");
}
if (errors.length > 0) {
  process.exit(1);
}
const contract = result.contracts[SOURCE][CONTRACT];
const artifact = {
  contractName: CONTRACT,
  compiler: `solc-js ${solc.version()}`,
  settings: input.settings,
  abi: contract.abi,
  bytecode: "0x" + contract.evm.bytecode.object,
  deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
};
writeFileSync(output, JSON.stringify(artifact, null, 2) + "\n");
process.stderr.write(`wrote ${output}\n`);
