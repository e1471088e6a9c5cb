from conftest import Api


async def test_health(api: Api) -> None:
    response = await api.http.get("/health")
    assert response.json() == {"status": "ok", "database": "ok", "cache": "ok"}
