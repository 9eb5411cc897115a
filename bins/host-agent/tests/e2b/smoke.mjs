// Smoke test of the official npm `e2b` SDK against a Petrel host agent:
// create with egress rules (an address and a name), run, write/read a file, info, replace the
// rule, kill. Needs E2B_API_KEY,
// E2B_API_URL and E2B_SANDBOX_URL; `cargo test -p host-agent --test e2b`
// installs the pinned package and runs this from the install directory.
import assert from 'node:assert/strict'
import { ALL_TRAFFIC, Sandbox } from 'e2b'

const sandbox = await Sandbox.create({
  metadata: { smoke: 'npm' },
  envs: { SMOKE: 'yes' },
  network: { allowOut: ['192.0.2.1', '*.example.test'], denyOut: [ALL_TRAFFIC] },
})
try {
  const result = await sandbox.commands.run('echo "hello from $(whoami) $SMOKE"')
  assert.equal(result.stdout, 'hello from user yes\n')
  assert.equal(result.exitCode, 0)

  await sandbox.files.write('/home/user/npm.txt', 'written by node')
  assert.equal(await sandbox.files.read('/home/user/npm.txt'), 'written by node')

  const info = await sandbox.getInfo()
  assert.equal(info.sandboxId, sandbox.sandboxId)
  assert.equal(info.state, 'running')
  assert.deepEqual(info.metadata, { smoke: 'npm' })
  assert.ok(await sandbox.isRunning())
  assert.deepEqual(info.network?.denyOut, ['0.0.0.0/0'])
  assert.deepEqual(info.network?.allowOut, ['192.0.2.1/32', '*.example.test'])

  // Denied before it leaves the host: nothing reaches the internet.
  const out = await sandbox.commands.run('curl -s -m 5 http://1.0.0.1/ || echo blocked')
  assert.equal(out.stdout, 'blocked\n')
  // A name no rule allows is reset by the agent's proxy, never relayed.
  const named = await sandbox.commands.run(
    'curl -s -m 5 --resolve other.test:80:1.0.0.1 http://other.test/ || echo blocked')
  assert.equal(named.stdout, 'blocked\n')
  await sandbox.updateNetwork({ denyOut: ['203.1.0.0/16'] })
  const updated = await sandbox.getInfo()
  assert.deepEqual(updated.network?.denyOut, ['203.1.0.0/16'])
  assert.ok(!updated.network?.allowOut?.length)
} finally {
  assert.equal(await sandbox.kill(), true)
}
assert.equal(await sandbox.isRunning(), false)
console.log('npm e2b smoke test passed')
