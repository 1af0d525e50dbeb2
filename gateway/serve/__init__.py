"""The running gateway: the aiohttp application, the server and its workers, the demo backend."""
