"""The parent of an IsolatedTransport never loads neonize's Go core: it only decodes protobufs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PARENT = """
import asyncio, sys
import waclient.host.app  # the host's whole import graph
from waclient import Backoff, Client, ClientState, IsolatedTransport
from waclient._neonize import go_core_loaded
from waclient.events import MessageEv
from waclient.transports.simulated import media_message_event

async def main(db):
    seen = []
    transport = IsolatedTransport(db, worker="simulated")
    async with Client(transport, backoff=Backoff(0, 0, jitter=0)) as client:
        client.on(MessageEv, seen.append)
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        await transport.emit(media_message_event(size=4096))
        await client.idle()
        await client.send_image("15550000001", b"img", caption="c")
        assert len(await client.download(seen[0])) == 4096
        group = await client.create_group("g", ["15550000001"])
        assert (await client.group_info(group.JID)).GroupName.Name == "g"
    print(go_core_loaded())

asyncio.run(main(sys.argv[1]))
"""


def test_the_isolated_parent_never_loads_the_go_core(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PARENT, str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split() == ["False"], "the parent mapped neonize's Go core"


def test_the_full_package_still_works_after_the_deferred_import() -> None:
    code = (
        "from waclient import Client; import neonize; "
        "from waclient._neonize import go_core_loaded; assert not go_core_loaded(); "
        "from neonize import NewClient, __version__; "
        "assert go_core_loaded() and __version__ == '0.5.2' and neonize.NewClient is NewClient"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
