"""Run by tests/integration/test_mcp.py inside a venv of its own (langchain-mcp-adapters requires mcp<2, the
project mcp 2.x): loads our MCP tools into LangChain and invokes them as an agent's tool calls would be.

Usage: python mcp_adapters_client.py URL API_KEY HR_ONLY_DOCUMENT_PATH; prints one JSON object.
"""

import asyncio
import json
import sys

from langchain_core.messages import ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient


async def main(url: str, key: str, forbidden: str) -> dict:
    client = MultiServerMCPClient({"docs": {"transport": "streamable_http", "url": url,
                                            "headers": {"Authorization": f"Bearer {key}"}}})
    tools = {t.name: t for t in await client.get_tools()}
    out = {"tools": sorted(tools), "search_args": sorted(tools["search"].args)}

    def call(name: str, args: dict, cid: str) -> dict:
        return {"name": name, "args": args, "id": cid, "type": "tool_call"}

    msg = await tools["search"].ainvoke(call("search", {"query": "password rules", "k": 5}, "call_1"))
    assert isinstance(msg, ToolMessage)
    out["search"] = {"status": msg.status, "tool_call_id": msg.tool_call_id,
                     "results": (msg.artifact or {}).get("structured_content", {}).get("results", [])}
    first = out["search"]["results"][0]["id"]
    src = await tools["get_source"].ainvoke(call("get_source", {"id": first}, "call_2"))
    out["get_source"] = {"status": src.status, "content": str(src.content), "id": first}
    bad = await tools["get_source"].ainvoke(call("get_source", {"id": forbidden + "#0"}, "call_3"))
    out["refused"] = {"status": bad.status, "content": str(bad.content)}
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
