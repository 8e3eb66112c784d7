"""Builds the application: settings, database, the background tasks (follower, scheduler, SSE
feed) in the lifespan, and the routers. ``uvicorn app.main:app`` or ``layersync serve``."""

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import errors, limits
from app.auth import AuthMiddleware
from app.datadir import hold_data_dir
from app.db import create_schema, make_engine
from app.follower import follow_forever
from app.pubsub import Broker
from app.routes import api, auth, checkpoints, pages, probes, run_page, studies
from app.scheduler import Scheduler
from app.settings import Settings
from app.sse import feed_forever


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with hold_data_dir(settings):  # first: a second server on this data dir stops here (DataDirInUse)
            settings.runs_dir.mkdir(parents=True, exist_ok=True)
            engine = make_engine(settings.db_url)
            create_schema(engine)
            stored = asyncio.Event()  # set when events were stored: wakes the SSE feed at once
            app.state.settings, app.state.engine, app.state.broker = settings, engine, Broker()
            app.state.scheduler = Scheduler(engine, settings)
            tasks = [
                asyncio.create_task(follow_forever(engine, stored)),
                asyncio.create_task(app.state.scheduler.run_forever(stored)),
                asyncio.create_task(feed_forever(engine, app.state.broker, stored)),
            ]
            yield
            # workers are left running on purpose: detached, they outlive the server, which takes them back on start
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            engine.dispose()

    app = FastAPI(title="LayerSync Studio", lifespan=lifespan)
    errors.install(app)
    app.include_router(api.router)
    app.include_router(checkpoints.router)
    app.include_router(pages.router)
    app.include_router(run_page.router)  # after pages: /runs/new before /runs/{run_id}
    app.include_router(probes.router)
    app.include_router(studies.router)
    app.include_router(auth.router)
    app.add_middleware(AuthMiddleware, settings=settings)  # a no-op unless settings.token is set
    app.add_middleware(limits.BodyLimit)  # outermost: a too-large body is refused before anything reads it
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app


app = create_app()
