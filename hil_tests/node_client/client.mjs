// A third-party OPC UA client (node-opcua, a stack other than asyncua) against `cellctl serve`:
// it finds the service's namespace by its URI, browses Objects -> PackML and Objects -> Tags,
// reads PackML.State, calls the PackML methods named on its command line in order, reads State
// again, and prints all it saw as one JSON object on stdout.
//
//   node client.mjs URL [METHOD [INPUT...]]...
//   node client.mjs opc.tcp://127.0.0.1:4850 LoadRecipe press-fit parts=1 Reset Start
//
// Each method takes as many String inputs as its InputArguments declare; a String[] input (the
// Parameters of LoadRecipe) takes every word up to the next method's name. A call that the
// server refuses is a result (its status code name is printed), not an error.
//
// Exit codes: 0 done; 1 bad command line or an address space without what it needs; 2 no
// connection; 3 a request failed; 4 the whole run took longer than the deadline (60 s).

const NAMESPACE = "urn:cellctl:service";
const PACKML = "PackML";
const TAGS = "Tags";
const DEADLINE_MS = 60_000; // the whole run, connection included: it never hangs a test
const REQUEST_MS = 15_000; // one request
const CONNECT_MS = 10_000;

const EXIT = { usage: 1, connection: 2, request: 3, timeout: 4 };

// node-opcua writes warnings with console.log: keep stdout for the JSON alone.
for (const name of ["log", "info", "warn", "debug"]) console[name] = console.error;

class Failure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const report = { url: process.argv[2] ?? null, phase: "start", calls: [] };
let finished = false;

function finish(code, error) {
  if (finished) return;
  finished = true;
  if (error) report.error = error;
  else report.phase = "done";
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  process.exitCode = code;
}

// The hard deadline: whatever hangs (a server that never answers, a socket that never closes),
// the process prints what it has and exits.
setTimeout(() => {
  finish(EXIT.timeout, `timed out after ${DEADLINE_MS / 1000} s while ${report.phase}`);
  process.exit(EXIT.timeout);
}, DEADLINE_MS).unref();

async function main() {
  const url = process.argv[2];
  const words = process.argv.slice(3);
  if (!url || !url.startsWith("opc.tcp://")) {
    throw new Failure(EXIT.usage, "usage: node client.mjs opc.tcp://HOST:PORT [METHOD [INPUT...]]...");
  }

  report.phase = "loading node-opcua-client";
  let opcua;
  try {
    opcua = await import("node-opcua-client");
  } catch (error) {
    throw new Failure(EXIT.usage, `node-opcua-client is not installed (run .ci/node-client): ${error.message}`);
  }
  const {
    OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, BrowseDirection,
    NodeClass, DataType, VariantArrayType, resolveNodeId,
  } = opcua;

  const client = OPCUAClient.create({
    applicationName: "cellctl-node-client",
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    transportTimeout: CONNECT_MS,
    defaultTransactionTimeout: REQUEST_MS,
    keepSessionAlive: false,
  });

  report.phase = `connecting to ${url}`;
  try {
    await client.connect(url);
  } catch (error) {
    throw new Failure(EXIT.connection, `cannot connect to ${url}: ${error.message}`);
  }
  let session;
  try {
    report.phase = "opening an anonymous session";
    try {
      session = await client.createSession();
    } catch (error) {
      throw new Failure(EXIT.connection, `no anonymous session on ${url}: ${error.message}`);
    }
    await drive(session, words, { AttributeIds, BrowseDirection, NodeClass, DataType, VariantArrayType, resolveNodeId });
  } finally {
    report.phase = "disconnecting";
    if (session) await session.close().catch(() => {});
    await client.disconnect().catch(() => {});
  }
}

async function drive(session, words, ua) {
  report.phase = "reading the NamespaceArray";
  const namespaces = await session.readNamespaceArray();
  const ns = namespaces.indexOf(NAMESPACE);
  if (ns < 0) {
    throw new Failure(EXIT.usage, `the server has no namespace ${NAMESPACE} (it has: ${namespaces.join(", ")})`);
  }
  report.namespace = { uri: NAMESPACE, index: ns };

  report.phase = "browsing Objects";
  const objects = await children(session, ua.resolveNodeId("ObjectsFolder"), ua);
  const packml = find(objects, ns, PACKML, "Objects");
  const tags = find(objects, ns, TAGS, "Objects");

  report.phase = `browsing ${PACKML}`;
  const members = await children(session, packml.nodeId, ua);
  const variables = members.filter((r) => r.nodeClass === ua.NodeClass.Variable);
  const methods = members.filter((r) => r.nodeClass === ua.NodeClass.Method);
  report.packml = {
    nodeId: packml.nodeId.toString(),
    variables: variables.map((r) => r.browseName.name),
    methods: methods.map((r) => r.browseName.name),
  };
  report.phase = `browsing ${TAGS}`;
  report.tags = (await children(session, tags.nodeId, ua)).map((r) => r.browseName.name);

  report.phase = "reading the methods' InputArguments";
  const signatures = new Map();
  for (const method of methods) {
    const definition = await session.getArgumentDefinition(method.nodeId);
    signatures.set(method.browseName.name, { nodeId: method.nodeId, inputs: definition.inputArguments ?? [] });
  }
  const calls = parseCalls(words, signatures, ua);

  const state = find(variables, ns, "State", PACKML);
  report.phase = "reading State";
  report.stateBefore = await readValue(session, state.nodeId, ua);
  for (const call of calls) {
    report.phase = `calling ${call.method}`;
    const result = await session.call({
      objectId: packml.nodeId,
      methodId: signatures.get(call.method).nodeId,
      inputArguments: call.variants,
    });
    report.calls.push({
      method: call.method,
      inputs: call.inputs,
      status: result.statusCode.name,
      outputs: (result.outputArguments ?? []).map((v) => v.value),
    });
  }
  report.phase = "reading State again";
  report.stateAfter = await readValue(session, state.nodeId, ua);
}

// The targets of a node's forward hierarchical references (browseNext for the rest, if the
// server answers in parts).
async function children(session, nodeId, ua) {
  let result = await session.browse({
    nodeId,
    referenceTypeId: "HierarchicalReferences",
    browseDirection: ua.BrowseDirection.Forward,
    includeSubtypes: true,
    nodeClassMask: 0,
    resultMask: 63,
  });
  const found = [];
  for (;;) {
    if (result.statusCode.isNotGood()) {
      throw new Failure(EXIT.request, `browsing ${nodeId.toString()}: ${result.statusCode.name}`);
    }
    found.push(...(result.references ?? []));
    if (!result.continuationPoint || result.continuationPoint.length === 0) return found;
    result = await session.browseNext(result.continuationPoint, false);
  }
}

function find(references, ns, name, where) {
  const hit = references.find((r) => r.browseName.namespaceIndex === ns && r.browseName.name === name);
  if (!hit) {
    const seen = references.map((r) => `${r.browseName.namespaceIndex}:${r.browseName.name}`);
    throw new Failure(EXIT.usage, `no ${ns}:${name} under ${where} (found: ${seen.join(", ")})`);
  }
  return hit;
}

async function readValue(session, nodeId, ua) {
  const value = await session.read({ nodeId, attributeId: ua.AttributeIds.Value });
  return { status: value.statusCode.name, value: value.value.value };
}

// The command line's words as calls: a method's name, then one word per scalar String input; a
// String[] input takes the words up to the next method's name.
function parseCalls(words, signatures, ua) {
  const calls = [];
  let i = 0;
  while (i < words.length) {
    const method = words[i++];
    const signature = signatures.get(method);
    if (!signature) {
      throw new Failure(EXIT.usage, `no method ${method} on ${PACKML} (methods: ${[...signatures.keys()].join(", ")})`);
    }
    const inputs = {};
    const variants = [];
    for (const argument of signature.inputs) {
      if (argument.dataType.value !== ua.DataType.String || argument.dataType.namespace !== 0) {
        throw new Failure(EXIT.usage, `${method}'s input ${argument.name} is not a String`);
      }
      if (argument.valueRank >= 1) {
        const items = [];
        while (i < words.length && !signatures.has(words[i])) items.push(words[i++]);
        inputs[argument.name] = items;
        variants.push({ dataType: ua.DataType.String, arrayType: ua.VariantArrayType.Array, value: items });
      } else {
        if (i >= words.length) {
          throw new Failure(EXIT.usage, `${method} needs its input ${argument.name}`);
        }
        inputs[argument.name] = words[i];
        variants.push({ dataType: ua.DataType.String, value: words[i++] });
      }
    }
    calls.push({ method, inputs, variants });
  }
  return calls;
}

main().then(
  () => finish(0),
  (error) => finish(error instanceof Failure ? error.code : EXIT.request, error.message ?? String(error)),
).finally(() => {
  // Timers node-opcua leaves behind must not keep a finished run alive (stdout to a file or
  // a pipe is written synchronously, so the JSON is out).
  process.exit();
});
